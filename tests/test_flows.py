"""Flows: an action made of named, dependent requests (an organisation, then the person linked to it).

The flow here is the shape of a CRM that keeps people and organisations
apart: create the organisation, then the person with the organisation's id
from its answer, then (only for demo requests) a note on the person.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine import outcome as oc
from engine.compile.compiler import PresetError, load_preset
from engine.golden import deliver_scripted
from engine.language.settings import resolve
from engine.pipeline.prepare import Pipeline
from engine.runtime import Engine
from engine.state.dead_letters import MemoryDeadLetters
from language_fixtures import ACME_PRESET, lead, write_acme

KEY = "k-live-5f2a9c"
REQUEST_AND_UPSERT = """    request:
      method: POST
      url: "{settings.base_url}/v1/contacts"
      headers: {Content-Type: application/json, Accept: application/json}
    upsert:
      strategy: on_conflict
      found: '{"id": $match(conflict.body.message, /id ([0-9]+)/).groups[0]}'
      update:
        method: PATCH
        url: "{settings.base_url}/v1/contacts/{found.id}"
        body: document
"""
FLOW = """    flow:
      - name: organisation
        request: {method: POST, url: "{settings.base_url}/v1/organizations"}
        body: '{"name": traits.name & " Ltd"}'
      - name: person
        request:
          method: POST
          url: "{settings.base_url}/v1/organizations/{steps.organisation.body.data.id}/persons"
          headers: {Accept: application/json}
        body: '$merge([document, {"org_id": steps.organisation.body.data.id}])'
        responses:
          - when: {status: 400, match: "body.error = 'org_missing'"}
            then: fail
            message: the organisation was not there any more
      - name: note
        when: values.source = "demo"
        request: {method: POST, url: "{settings.base_url}/v1/notes"}
        body: '{"person_id": steps.person.body.data.id, "content": "Asked for a demo"}'
"""
NO_UPSERT_RULE = (
    "    - when: {status: 409, match: \"body.code = 'DUPLICATE'\"}\n      then: upsert\n"
    "      message: merged into the existing contact\n",
    "",
)
DEMO_ROW = (
    "    Signed Up: {action: upsert_contact, values: {source: signup}}\n",
    "    Signed Up: {action: upsert_contact, values: {source: signup}}\n"
    "    Demo Requested: {action: upsert_contact, values: {source: demo}}\n",
)


# The steps' answers carry their record under data.
DELIVER_DATA = (
    '    - when: {status: [200, 201], step: [create, update], match: "$exists(body.id)"}',
    '    - when: {status: [200, 201], match: "$exists(body.data.id)"}',
)


def flow_preset(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    return write_acme(tmp_path, ACME_PRESET, (REQUEST_AND_UPSERT, FLOW), NO_UPSERT_RULE, DEMO_ROW, DELIVER_DATA, *edits)


def demo(email: str = "jane@acme.test", message_id: str = "d-1") -> dict[str, Any]:
    return {**lead(email, message_id, name="Jane"), "event": "Demo Requested"}


def scripted(tmp_path: Path, responses: list[dict[str, Any]], events: list[dict[str, Any]]) -> Any:
    preset = load_preset(str(flow_preset(tmp_path)))
    settings = resolve(preset.settings, {"api_key": KEY}, require=True)
    run = asyncio.run(deliver_scripted(preset, settings, events, responses))
    assert run.problem is None, run.problem
    return run


ORG = {"status": 201, "body": {"data": {"id": 11}}}
PERSON = {"status": 201, "body": {"data": {"id": 22}}}
NOTE = {"status": 201, "body": {"data": {"id": 33}}}


def test_each_step_reads_the_answers_before_it_and_a_false_when_skips_a_step(tmp_path: Path) -> None:
    run = scripted(tmp_path, [ORG, PERSON], [lead(name="Jane")])
    [outcome] = run.outcomes
    assert outcome["outcome"] == oc.DELIVERED
    assert outcome["detail"] == "flow delivered: organisation, person (skipped: note)"
    organisation, person = run.sent
    assert (organisation.method, organisation.url) == ("POST", "https://api.acme.test/v1/organizations")
    assert organisation.body == {"name": "Jane Ltd"} and organisation.headers["Content-Type"] == "application/json"
    assert person.url == "https://api.acme.test/v1/organizations/11/persons"
    assert person.body == {"email": "jane@acme.test", "name": "Jane", "source": "signup", "org_id": 11}
    # Every request of the flow is in the outcome, in order, masked; `request` is the last one.
    assert [r["url"] for r in outcome["requests"]] == [
        "https://api.acme.test/v1/organizations?key=***",
        "https://api.acme.test/v1/organizations/11/persons?key=***",
    ]
    assert outcome["request"] == outcome["requests"][-1]
    assert [e["url"] for e in run.exchanges] == [r["url"] for r in outcome["requests"]]
    assert KEY not in json.dumps(run.outcomes)


def test_a_step_whose_when_holds_is_sent_with_what_earlier_steps_answered(tmp_path: Path) -> None:
    run = scripted(tmp_path, [ORG, PERSON, NOTE], [demo()])
    [outcome] = run.outcomes
    assert outcome["detail"] == "flow delivered: organisation, person, note"
    assert run.sent[2].body == {"person_id": 22, "content": "Asked for a demo"}


def test_a_steps_own_rule_decides_before_the_presets_and_the_failure_names_the_step(tmp_path: Path) -> None:
    refused = {"status": 400, "body": {"error": "org_missing"}}
    run = scripted(tmp_path, [ORG, refused], [lead(name="Jane")])
    [outcome] = run.outcomes
    assert (outcome["outcome"], outcome["cause"]) == (oc.FAILED, "http_400")
    assert outcome["detail"] == (
        "the organisation was not there any more (delivered before it: organisation; a replay resumes after them)"
    )
    assert len(outcome["requests"]) == 2


def test_a_dry_run_shows_the_steps_that_need_no_answer(tmp_path: Path) -> None:
    preset = load_preset(str(flow_preset(tmp_path)))
    outcome = Pipeline(preset, {"api_key": KEY}).dry_run(lead(name="Jane"), 0)
    assert outcome.outcome == oc.WOULD_SEND
    assert outcome.request["url"] == "https://api.acme.test/v1/organizations?key=***"
    assert outcome.requests == [outcome.request]  # the person needs the organisation's answer


class Crm:
    """Organisations and persons on loopback; persons answer 503 until ``up``."""

    def __init__(self) -> None:
        self.up = False
        self.calls: list[tuple[str, int]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/organizations", self.organisation)
        app.router.add_post("/v1/organizations/{org}/persons", self.person)
        return app

    async def organisation(self, request: web.Request) -> web.Response:
        self.calls.append(("organisation", 201))
        return web.json_response({"data": {"id": 11}}, status=201)

    async def person(self, request: web.Request) -> web.Response:
        status = 201 if self.up else 503
        self.calls.append((f"person of {request.match_info['org']}", status))
        return web.json_response({"data": {"id": 22}} if self.up else {"error": "down"}, status=status)


def test_a_flow_dead_lettered_part_way_resumes_on_replay_without_repeating_a_delivered_step(tmp_path: Path) -> None:
    preset = str(flow_preset(tmp_path / "preset"))

    async def scenario() -> tuple[Any, Any, list[dict[str, Any]], Crm]:
        crm = Crm()
        runner = web.AppRunner(crm.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

        async def no_sleep(_: float) -> None:
            return None

        try:
            async with Engine.from_preset(
                preset, {"api_key": KEY, "base_url": base}, dead_letters=MemoryDeadLetters(), sleep=no_sleep
            ) as engine:
                first = await engine.process(lead(name="Jane"), 0)
                letters = engine.dead_letters.entries()
                crm.up = True
                [replayed] = await engine.replay_dead_letters()
        finally:
            await runner.cleanup()
        return first, replayed, letters, crm

    first, replayed, letters, crm = asyncio.run(scenario())
    assert (first.outcome, first.cause) == (oc.DEAD_LETTERED, "http_503")
    assert first.detail.startswith("gave up after 3 attempts of the flow step 'person' (POST ")
    assert first.detail.endswith("(delivered before it: organisation; a replay resumes after them)")
    [letter] = letters
    assert letter["context"]["steps_done"]["organisation"]["body"] == {"data": {"id": 11}}
    assert KEY not in json.dumps(letter)
    assert replayed.outcome == oc.DELIVERED, replayed.to_dict()
    assert replayed.detail == "flow delivered: organisation, person (skipped: note)"
    # The organisation was created once; the replay sent only the person, linked to it.
    assert crm.calls == [("organisation", 201)] + [("person of 11", 503)] * 3 + [("person of 11", 201)]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            ('body: \'{"person_id": steps.person.body.data.id', 'body: \'{"person_id": steps.persn.body.data.id'),
            "steps.persn does not exist (steps: organisation, person)",
        ),
        (
            (
                "/v1/organizations/{steps.organisation.body.data.id}/persons",
                "/v1/organizations/{steps.org.body.data.id}/persons",
            ),
            "{steps.org.body.data.id}: no earlier step is named 'org' (earlier: organisation)",
        ),
        (
            ("      - name: organisation\n", "      - name: organisation\n        when: traits.name\n"),
            "the first step always runs",
        ),
        (("      - name: note\n", "      - name: person\n"), "step name 'person' is already used by an earlier step"),
        (
            ("    flow:\n", '    request: {method: POST, url: "{settings.base_url}/v1/x"}\n    flow:\n'),
            "an action with a flow has no request",
        ),
        (
            ('body: \'{"name": traits.name & " Ltd"}\'', "body: '{\"name\": steps.person.body}'"),
            "'steps' is not an input of flow step 'organisation'",
        ),
    ],
)
def test_check_names_flow_mistakes_at_their_line(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = flow_preset(tmp_path, edit)
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    assert any(message in line and line.startswith(f"{path}:") for line in info.value.problems), info.value.problems


def test_explain_lists_the_steps_it_can_show_and_names_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    path = flow_preset(tmp_path)
    event = json.dumps(demo())
    assert main(["explain", str(path), "--event", event, "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["steps"]["flow"]["steps"] == ["organisation", "person", "note"]
    assert explained["steps"]["flow"]["shown"] == 1
    assert [r["url"] for r in explained["steps"]["requests"]] == ["https://api.acme.test/v1/organizations?key=***"]
    assert main(["explain", str(path), "--event", event]) == 0
    text = capsys.readouterr().out
    assert "1. POST https://api.acme.test/v1/organizations?key=***" in text and "then: person, note" in text
