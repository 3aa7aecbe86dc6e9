"""Batching: many events in one request, each item's result read back into its own event's outcome.

The destination here is the shape of a batch upsert endpoint: ``POST
/v1/contacts/batch`` takes ``{"inputs": [...]}`` and answers 200 with the
results, or 207 with ``errors`` naming the emails that failed and whether
trying again may help.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine import outcome as oc
from engine.compile.compiler import PresetError, load_preset
from engine.golden import ScriptedTransport
from engine.pipeline.prepare import Pipeline
from engine.runtime import Engine
from engine.state.dead_letters import MemoryDeadLetters
from language_fixtures import ACME_PRESET, lead, write_acme

KEY = "k-live-5f2a9c"
MAX_WAIT = 7.0
UPSERT = """    upsert:
      strategy: on_conflict
      found: '{"id": $match(conflict.body.message, /id ([0-9]+)/).groups[0]}'
      update:
        method: PATCH
        url: "{settings.base_url}/v1/contacts/{found.id}"
        body: document
"""
BATCH = f"""    batch:
      max_items: 3
      max_wait_seconds: {MAX_WAIT}
      body: '{{"inputs": items}}'
      item_error: |
        (
          $email := item.email;
          $error := body.errors[$email in context.email][0];
          $error.category = "RETRY" ? {{"retry": $error.message}} : $error.message
        )
"""
EDITS = (
    (UPSERT, BATCH),
    ('url: "{settings.base_url}/v1/contacts"\n', 'url: "{settings.base_url}/v1/contacts/batch"\n'),
    (
        "    - when: {status: 409, match: \"body.code = 'DUPLICATE'\"}\n      then: upsert\n"
        "      message: merged into the existing contact\n",
        "",
    ),
    (
        '    - when: {status: [200, 201], step: [create, update], match: "$exists(body.id)"}',
        "    - when: {status: [200, 207], step: create}",
    ),
    (
        "  rate_limit: {requests: 100, per_seconds: 1}\n",
        "  rate_limit: {requests: 100, per_seconds: 1}\n  order_by: traits.email\n",
    ),
)


def batch_preset(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    return write_acme(tmp_path, ACME_PRESET, *EDITS, *edits)


class HeldTimers:
    """The engine's sleep: a batch's wait lasts until the test says; anything else passes at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def sleep(self, delay: float) -> None:
        if delay == MAX_WAIT:
            await self.release.wait()
        await asyncio.sleep(0)


async def one_batch(events: list[dict[str, Any]]) -> AsyncIterator[list[tuple[int, Any]]]:
    yield list(enumerate(events))


OK = {"status": 200, "body": {"status": "COMPLETE", "results": []}}


def test_a_request_takes_at_most_max_items_and_the_rest_go_when_the_wait_is_over(tmp_path: Path) -> None:
    preset = load_preset(str(batch_preset(tmp_path)))
    events = [lead(f"p{i}@acme.test", f"m-{i}") for i in range(5)]

    async def scenario() -> tuple[int, list[Any], ScriptedTransport]:
        transport = ScriptedTransport(Path("batch"), [OK, OK])
        timers = HeldTimers()
        async with Engine(
            preset, _settings(preset), transport=transport, sleep=timers.sleep, dead_letters=MemoryDeadLetters()
        ) as engine:
            stream = asyncio.ensure_future(_collect(engine.process_batches(one_batch(events))))
            for _ in range(100):
                await asyncio.sleep(0)
            sent_before_the_wait = len(transport.sent)
            timers.release.set()
            outcomes = await stream
        return sent_before_the_wait, outcomes, transport

    before, outcomes, transport = asyncio.run(scenario())
    assert before == 1  # three filled the first request at once; two waited
    bodies = [request.body for request, _ in transport.sent]
    assert [[item["email"] for item in body["inputs"]] for body in bodies] == [
        ["p0@acme.test", "p1@acme.test", "p2@acme.test"],
        ["p3@acme.test", "p4@acme.test"],
    ]
    assert [o.outcome for o in outcomes] == [oc.DELIVERED] * 5
    assert [o.detail for o in outcomes] == ["delivered in a request of 3 item(s)"] * 3 + [
        "delivered in a request of 2 item(s)"
    ] * 2
    assert outcomes[0].request["url"] == "https://api.acme.test/v1/contacts/batch?key=***"


def test_one_record_appears_once_per_request(tmp_path: Path) -> None:
    preset = load_preset(str(batch_preset(tmp_path)))
    events = [lead("jane@acme.test", "m-1"), lead("joe@acme.test", "m-2"), lead("JANE@acme.test", "m-3")]

    async def scenario() -> ScriptedTransport:
        transport = ScriptedTransport(Path("batch"), [OK, OK])
        timers = HeldTimers()
        timers.release.set()
        async with Engine(
            preset, _settings(preset), transport=transport, sleep=timers.sleep, dead_letters=MemoryDeadLetters()
        ) as engine:
            await _collect(engine.process_batches(one_batch(events)))
        return transport

    transport = asyncio.run(scenario())
    assert [[item["email"] for item in request.body["inputs"]] for request, _ in transport.sent] == [
        ["jane@acme.test", "joe@acme.test"],
        ["jane@acme.test"],
    ]


class BatchApi:
    """POST /v1/contacts/batch on loopback: 207 for the emails it is told to refuse, once each."""

    def __init__(self, refuse: dict[str, dict[str, str]]) -> None:
        self.refuse = refuse
        self.requests: list[list[str]] = []

    async def batch(self, request: web.Request) -> web.Response:
        inputs = (await request.json())["inputs"]
        emails = [item["email"] for item in inputs]
        self.requests.append(emails)
        errors = [{**self.refuse.pop(email), "context": {"email": [email]}} for email in emails if email in self.refuse]
        body = {"status": "COMPLETE", "results": [{"id": n, "email": e} for n, e in enumerate(emails)]}
        return web.json_response({**body, "errors": errors} if errors else body, status=207 if errors else 200)


def test_partial_success_maps_back_per_item_and_only_the_failed_item_is_sent_again(tmp_path: Path) -> None:
    preset = str(batch_preset(tmp_path / "preset"))
    api = BatchApi(
        {
            "p1@acme.test": {"category": "RETRY", "message": "contact is locked, try again"},
            "p2@acme.test": {"category": "VALIDATION_ERROR", "message": "Property values were not valid"},
        }
    )
    events = [lead(f"p{i}@acme.test", f"m-{i}") for i in range(3)]

    async def scenario() -> list[Any]:
        app = web.Application()
        app.router.add_post("/v1/contacts/batch", api.batch)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        timers = HeldTimers()
        timers.release.set()
        try:
            async with Engine.from_preset(
                preset, {"api_key": KEY, "base_url": base}, sleep=timers.sleep, dead_letters=MemoryDeadLetters()
            ) as engine:
                return await _collect(engine.process_batches(one_batch(events)))
        finally:
            await runner.cleanup()

    outcomes = asyncio.run(scenario())
    assert api.requests == [["p0@acme.test", "p1@acme.test", "p2@acme.test"], ["p1@acme.test"]]
    assert [o.outcome for o in outcomes] == [oc.DELIVERED, oc.DELIVERED, oc.FAILED]
    assert outcomes[1].detail == "delivered in a request of 1 item(s) (after: contact is locked, try again)"
    assert outcomes[1].attempts == 2
    assert (outcomes[2].cause, outcomes[2].detail) == (
        "item_failed",
        "item 2 of a request of 3: Property values were not valid",
    )
    assert outcomes[2].response["status"] == 207
    assert KEY not in json.dumps([o.to_dict() for o in outcomes])


def test_a_dry_run_shows_the_event_as_a_request_of_one(tmp_path: Path) -> None:
    preset = load_preset(str(batch_preset(tmp_path)))
    outcome = Pipeline(preset, {"api_key": KEY}).dry_run(lead("jane@acme.test"), 0)
    assert outcome.outcome == oc.WOULD_SEND
    assert outcome.request["body"] == {"inputs": [{"email": "jane@acme.test", "source": "signup"}]}


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            (
                "    batch:\n",
                '    upsert: {found: "x", update: {method: PATCH, url: "{settings.base_url}/x", body: document}}\n'
                "    batch:\n",
            ),
            "an action with a batch has no upsert",
        ),
        (("body: '{\"inputs\": items}'", "body: '{\"inputs\": itemz}'"), "'itemz' is not an input of the batch body"),
        (("$email := item.email;", "$email := document.email;"), "'document' is not an input of batch.item_error"),
    ],
)
def test_check_names_batch_mistakes_at_their_line(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = batch_preset(tmp_path, edit)
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    assert any(message in line and line.startswith(f"{path}:") for line in info.value.problems), info.value.problems


def _settings(preset: Any) -> Any:
    from engine.language.settings import resolve

    return resolve(preset.settings, {"api_key": KEY}, require=True)


async def _collect(outcomes: AsyncIterator[Any]) -> list[Any]:
    return [outcome async for outcome in outcomes]


def test_a_golden_delivery_case_pins_a_whole_batch(tmp_path: Path) -> None:
    from engine.golden import deliver_scripted
    from engine.language.settings import resolve

    preset = load_preset(str(batch_preset(tmp_path)))
    settings = resolve(preset.settings, {"api_key": KEY}, require=True)
    events = [lead(f"p{i}@acme.test", f"m-{i}") for i in range(4)]
    run = asyncio.run(deliver_scripted(preset, settings, events, [OK, OK]))
    assert run.problem is None, run.problem
    assert [len(exchange["body"]["inputs"]) for exchange in run.exchanges] == [3, 1]
    assert [exchange["answered"] for exchange in run.exchanges] == [200, 200]
    assert [o["outcome"] for o in run.outcomes] == [oc.DELIVERED] * 4
