"""Auth kinds, response predicates, upsert strategies and rate-limit declarations, end to end.

Each test delivers through the engine against scripted responses (the same
in-process transport golden delivery cases use) and checks what went on
the wire against the relevant RFC, and that no credential is ever shown.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.delivery.rate_limit import reset_seconds
from engine.golden import ScriptedRun, deliver_scripted
from engine.language.settings import resolve
from engine.pipeline.lookup import encode_query
from language_fixtures import ACME_PRESET, lead, write_acme

KEY = "k-live-5f2a9c"
CREATED = {"status": 201, "body": {"id": 7, "email": "jane@acme.test"}}


def deliver(
    tmp_path: Path,
    responses: list[dict[str, Any]],
    *edits: tuple[str, str],
    settings: dict | None = None,
    events: list[dict] | None = None,
) -> ScriptedRun:
    preset = load_preset(str(write_acme(tmp_path, ACME_PRESET, *edits)))
    resolved = resolve(preset.settings, settings if settings is not None else {"api_key": KEY}, require=True)
    run = asyncio.run(deliver_scripted(preset, resolved, events if events is not None else [lead()], responses))
    assert run.problem is None, run.problem
    return run


def shown(run: ScriptedRun) -> str:
    """Everything a person could see: outcomes and the masked exchanges."""
    return json.dumps({"outcomes": run.outcomes, "exchanges": run.exchanges})


# -- auth kinds -------------------------------------------------------------------


def test_api_key_in_a_query_parameter(tmp_path: Path) -> None:
    run = deliver(tmp_path, [CREATED])
    [sent] = run.sent
    assert sent.full_url() == f"https://api.acme.test/v1/contacts?key={KEY}"
    assert run.exchanges[0]["url"] == "https://api.acme.test/v1/contacts?key=***"
    assert run.outcomes[0]["outcome"] == oc.DELIVERED
    assert run.outcomes[0]["request"]["url"] == "https://api.acme.test/v1/contacts?key=***"
    assert KEY not in shown(run)


def test_api_key_in_a_header_with_a_value_template(tmp_path: Path) -> None:
    run = deliver(
        tmp_path, [CREATED], ("  in: query\n  name: key\n", '  in: header\n  name: X-Api-Key\n  value: "Key {key}"\n')
    )
    assert run.sent[0].headers["X-Api-Key"] == f"Key {KEY}"
    assert run.exchanges[0]["headers"]["X-Api-Key"] == "Key ***"
    assert KEY not in shown(run)


def test_bearer_from_a_secret_setting(tmp_path: Path) -> None:
    """RFC 6750 §2.1: Authorization: Bearer <token>."""
    run = deliver(
        tmp_path,
        [CREATED],
        (
            "  type: api_key\n  key_setting: api_key\n  in: query\n  name: key\n",
            "  type: bearer\n  token_setting: api_key\n",
        ),
    )
    assert run.sent[0].headers["Authorization"] == f"Bearer {KEY}"
    assert run.outcomes[0]["request"]["headers"]["Authorization"] == "Bearer ***"
    assert KEY not in shown(run)


def test_basic_from_username_and_password_templates(tmp_path: Path) -> None:
    """RFC 7617: Basic base64(user-id ":" password); an API key as the username, empty password."""
    run = deliver(
        tmp_path,
        [CREATED],
        (
            "  type: api_key\n  key_setting: api_key\n  in: query\n  name: key\n",
            '  type: basic\n  username: "{settings.api_key}"\n',
        ),
    )
    expected = base64.b64encode(f"{KEY}:".encode()).decode()
    assert run.sent[0].headers["Authorization"] == f"Basic {expected}"
    assert run.exchanges[0]["headers"]["Authorization"] == "Basic ***"
    assert KEY not in shown(run) and expected not in shown(run)


CLIENT_CREDENTIALS = (
    "  type: api_key\n  key_setting: api_key\n  in: query\n  name: key\n",
    '  type: oauth2_client_credentials\n  token_url: "{settings.base_url}/oauth/token"\n'
    "  client_id_setting: client_id\n  client_secret_setting: api_key\n"
    "  client_auth: basic\n  scopes: [contacts.write, contacts.read]\n",
)
WITH_CLIENT_ID = (
    "  api_key: {type: string, required: true, secret: true}\n",
    "  api_key: {type: string, required: true, secret: true}\n  client_id: {type: string, required: true}\n",
)


def test_client_credentials_with_http_basic_client_auth_is_minted_once(tmp_path: Path) -> None:
    """RFC 6749 §4.4 and §2.3.1: grant_type=client_credentials, client id and secret form-encoded then Basic."""
    token = {"status": 200, "body": {"access_token": "at-cc-000111", "token_type": "bearer", "expires_in": 3600}}
    run = deliver(
        tmp_path,
        [token, CREATED, CREATED],
        CLIENT_CREDENTIALS,
        WITH_CLIENT_ID,
        settings={"api_key": "s3cret/+=", "client_id": "my app"},
        events=[lead(message_id="m-1"), lead("joe@acme.test", message_id="m-2")],
    )
    mint, first, second = run.sent
    assert mint.form == {"grant_type": "client_credentials", "scope": "contacts.write contacts.read"}
    pair = base64.b64encode(b"my+app:s3cret%2F%2B%3D").decode()
    assert mint.headers["Authorization"] == f"Basic {pair}"
    assert first.headers["Authorization"] == second.headers["Authorization"] == "Bearer at-cc-000111"
    assert [o["outcome"] for o in run.outcomes] == [oc.DELIVERED, oc.DELIVERED]
    assert run.exchanges[0]["headers"]["Authorization"] == "Basic ***"
    assert "at-cc-000111" not in shown(run) and "s3cret" not in shown(run) and pair not in shown(run)


REFRESH = (
    "  type: api_key\n  key_setting: api_key\n  in: query\n  name: key\n",
    '  type: oauth2_refresh_token\n  token_url: "{settings.base_url}/oauth/token"\n'
    "  client_id_setting: client_id\n  client_secret_setting: api_key\n  refresh_token_setting: refresh_token\n"
    "  rotates_refresh_token: false\n",
)
WITH_REFRESH = (
    "  api_key: {type: string, required: true, secret: true}\n",
    "  api_key: {type: string, required: true, secret: true}\n"
    "  client_id: {type: string, required: true}\n"
    "  refresh_token: {type: string, required: true, secret: true}\n",
)


def test_refresh_token_that_does_not_rotate_keeps_the_configured_one(tmp_path: Path) -> None:
    """rotates_refresh_token: false is read: a refresh token in the answer is not adopted."""
    tokens = [
        {
            "status": 200,
            "body": {"access_token": f"at-{n}-xyzxyz", "refresh_token": f"rt-other-{n}", "expires_in": 3600},
        }
        for n in (1, 2)
    ]
    refused = {"status": 401, "body": {"error": "expired"}}
    run = deliver(
        tmp_path,
        [tokens[0], refused, tokens[1], CREATED],
        REFRESH,
        WITH_REFRESH,
        settings={"api_key": "s3cret-1", "client_id": "cid", "refresh_token": "rt-configured"},
    )
    first_mint, _, second_mint, _ = run.sent
    assert first_mint.form["refresh_token"] == second_mint.form["refresh_token"] == "rt-configured"
    assert first_mint.form["client_secret"] == "s3cret-1"  # client_auth defaults to form fields
    assert run.outcomes[0]["outcome"] == oc.DELIVERED
    assert run.exchanges[0]["form"]["refresh_token"] == "***" and run.exchanges[0]["form"]["client_secret"] == "***"


def test_a_refused_static_credential_is_dead_lettered_for_replay(tmp_path: Path) -> None:
    run = deliver(tmp_path, [{"status": 401, "body": {"message": "bad key"}}])
    [outcome] = run.outcomes
    assert outcome["outcome"] == oc.DEAD_LETTERED and outcome["cause"] == oc.AUTH_REJECTED
    assert outcome["detail"] == "the credential was refused; then `signal-engine dlq replay` sends this event again"
    assert len(run.sent) == 1  # nothing to refresh: not sent again


STATIC_KINDS = {
    "api_key": (),
    "bearer": (
        (
            "  type: api_key\n  key_setting: api_key\n  in: query\n  name: key\n",
            "  type: bearer\n  token_setting: api_key\n",
        ),
    ),
    "basic": (
        (
            "  type: api_key\n  key_setting: api_key\n  in: query\n  name: key\n",
            '  type: basic\n  username: "{settings.api_key}"\n',
        ),
    ),
}
FAIL_ON_401_403 = (
    "    - when: {status: 401}\n      then: refresh_auth\n      message: the credential was refused\n",
    "    - when: {status: [401, 403]}\n      then: fail\n      message: Fix the key in the settings.\n",
)
NO_RULE_FOR_401 = (
    "    - when: {status: 401}\n      then: refresh_auth\n      message: the credential was refused\n",
    "",
)


@pytest.mark.parametrize("kind", sorted(STATIC_KINDS))
@pytest.mark.parametrize("status", [401, 403])
def test_a_preset_cannot_make_a_refused_static_credential_final(tmp_path: Path, kind: str, status: int) -> None:
    """A `fail` rule on 401/403 for a static credential is overridden: a person fixes the key, then replays."""
    run = deliver(tmp_path, [{"status": status, "body": {"message": "no"}}], *STATIC_KINDS[kind], FAIL_ON_401_403)
    [outcome] = run.outcomes
    assert (outcome["outcome"], outcome["cause"], outcome["attempts"]) == (oc.DEAD_LETTERED, oc.AUTH_REJECTED, 1)
    assert outcome["detail"] == "Fix the key in the settings; then `signal-engine dlq replay` sends this event again"
    assert KEY not in shown(run)


def test_a_refused_static_credential_with_no_rule_is_dead_lettered_with_a_default_detail(tmp_path: Path) -> None:
    run = deliver(tmp_path, [{"status": 403, "body": {}}], NO_RULE_FOR_401)
    [outcome] = run.outcomes
    assert (outcome["outcome"], outcome["cause"]) == (oc.DEAD_LETTERED, oc.AUTH_REJECTED)
    assert outcome["detail"].startswith("the destination refused the api_key credential (403 to the create POST ")
    assert outcome["detail"].endswith("fix it in the settings; then `signal-engine dlq replay` sends this event again")
    assert KEY not in outcome["detail"]


def test_a_fail_rule_on_403_still_fails_for_an_oauth_credential(tmp_path: Path) -> None:
    """Only a setting is a person's to fix: an OAuth 403 (a missing scope) stays what the preset says."""
    token = {"status": 200, "body": {"access_token": "at-cc-000111", "token_type": "bearer", "expires_in": 3600}}
    run = deliver(
        tmp_path,
        [token, {"status": 403, "body": {}}],
        CLIENT_CREDENTIALS,
        WITH_CLIENT_ID,
        FAIL_ON_401_403,
        settings={"api_key": "s3cret", "client_id": "cid"},
    )
    assert (run.outcomes[0]["outcome"], run.outcomes[0]["cause"]) == (oc.FAILED, "http_403")


# -- response rules ------------------------------------------------------------------


def test_a_match_predicate_decides_on_the_body(tmp_path: Path) -> None:
    """A 201 without the record's id is not proof of delivery: retried, then dead-lettered."""
    empty = {"status": 201, "body": {"ok": True}}
    run = deliver(tmp_path, [empty, empty, empty])
    [outcome] = run.outcomes
    assert outcome["outcome"] == oc.DEAD_LETTERED and outcome["cause"] == "http_201"
    assert "gave up after 3 attempts" in outcome["detail"]
    assert outcome["detail"].endswith("answered without the created record")
    assert not outcome["detail"].rstrip(".").endswith("retrying")


def test_a_rule_for_one_step_does_not_judge_another(tmp_path: Path) -> None:
    """``step: lookup`` accepts a bare 200 for the lookup only; a create answered 200 without an id is retried."""
    empty = {"status": 200, "body": {}}
    run = deliver(tmp_path, [empty, empty, empty])
    assert run.outcomes[0]["outcome"] == oc.DEAD_LETTERED


def test_a_predicate_that_does_not_match_falls_through(tmp_path: Path) -> None:
    """A 409 that is not the duplicate the predicate describes is a plain failure."""
    run = deliver(tmp_path, [{"status": 409, "body": {"code": "LOCKED", "message": "locked"}}])
    assert run.outcomes[0]["outcome"] == oc.FAILED and run.outcomes[0]["cause"] == "http_409"


# -- upsert strategies ------------------------------------------------------------------


def test_on_conflict_takes_the_id_from_the_conflict_answer(tmp_path: Path) -> None:
    conflict = {"status": 409, "body": {"code": "DUPLICATE", "message": "exists as id 4242"}}
    run = deliver(tmp_path, [conflict, {"status": 200, "body": {"id": 4242}}])
    create, update = run.sent
    assert (create.method, update.method) == ("POST", "PATCH")
    assert update.url == "https://api.acme.test/v1/contacts/4242"
    assert update.body == {"email": "jane@acme.test", "source": "signup"}
    assert run.outcomes[0]["outcome"] == oc.DELIVERED
    assert run.outcomes[0]["detail"] == "merged into the existing contact (id 4242)"


LOOKUP_FIRST = (
    "    upsert:\n      strategy: on_conflict\n      found: '{\"id\": $match(conflict.body.message, /id ([0-9]+)/).groups[0]}'\n",
    "    upsert:\n      strategy: lookup_first\n      lookup:\n        method: POST\n"
    '        url: "{settings.base_url}/v1/contacts/search"\n'
    '        query: \'{"email[]": [document.email, $uppercase(document.email)], "limit": 1}\'\n'
    '        body: \'{"filter": {"email": document.email}}\'\n'
    "      found: lookup.body.results[0]\n",
)


def test_lookup_first_updates_what_it_finds_and_never_creates(tmp_path: Path) -> None:
    run = deliver(
        tmp_path, [{"status": 200, "body": {"results": [{"id": 9}]}}, {"status": 200, "body": {"id": 9}}], LOOKUP_FIRST
    )
    search, update = run.sent
    assert search.method == "POST" and search.body == {"filter": {"email": "jane@acme.test"}}
    assert search.full_url() == (
        "https://api.acme.test/v1/contacts/search?email%5B%5D=jane%40acme.test"
        "&email%5B%5D=JANE%40ACME.TEST&limit=1&key=" + KEY
    )
    assert update.method == "PATCH" and update.url.endswith("/v1/contacts/9")
    assert run.outcomes[0]["outcome"] == oc.DELIVERED


def test_lookup_first_creates_when_nothing_is_found(tmp_path: Path) -> None:
    run = deliver(tmp_path, [{"status": 200, "body": {"results": []}}, CREATED], LOOKUP_FIRST)
    assert [r.method for r in run.sent] == ["POST", "POST"]
    assert run.sent[1].url == "https://api.acme.test/v1/contacts"
    assert run.outcomes[0]["outcome"] == oc.DELIVERED


def test_a_failed_lookup_names_the_step(tmp_path: Path) -> None:
    run = deliver(tmp_path, [{"status": 400, "body": {"message": "bad filter"}}], LOOKUP_FIRST)
    [outcome] = run.outcomes
    assert outcome["outcome"] == oc.FAILED and "lookup" in outcome["detail"]


def test_query_parameters_repeat_for_arrays_and_declared_json() -> None:
    assert encode_query({"a[]": ["x", "y"], "n": 1, "b": True, "skip": None}) == [
        ("a[]", "x"),
        ("a[]", "y"),
        ("n", "1"),
        ("b", "true"),
    ]
    assert encode_query({"filter": {"email": "a@b.co"}}, frozenset({"filter"})) == [("filter", '{"email":"a@b.co"}')]
    with pytest.raises(ValueError):
        encode_query({"filter": {"email": "a@b.co"}})


# -- rate limits ------------------------------------------------------------------------


def test_a_wait_read_from_the_429_body(tmp_path: Path) -> None:
    run = deliver(
        tmp_path,
        [{"status": 429, "body": {"error": {"rate_reset": 2.5}}}, CREATED],
        (
            "  rate_limit: {requests: 100, per_seconds: 1}\n",
            '  rate_limit: {requests: 100, per_seconds: 1, wait_from_response: "body.error.rate_reset"}\n',
        ),
    )
    assert run.outcomes[0]["outcome"] == oc.DELIVERED
    assert any(abs(s - 2.5) < 0.01 for s in run.sleeps), run.sleeps


@pytest.mark.parametrize(
    "fmt, value, expected",
    [
        ("epoch_seconds", "1700000030", 30.0),
        ("epoch_milliseconds", "1700000030000", 30.0),
        ("delta_seconds", "30", 30.0),
        ("http_date", "Tue, 14 Nov 2023 22:14:20 GMT", 30.0),  # RFC 9110 IMF-fixdate; 1700000030 is 22:13:50
        ("epoch_seconds", "1700000030, 99", 30.0),  # first number of a two-value header
    ],
)
def test_reset_header_formats(fmt: str, value: str, expected: float) -> None:
    now = 1_700_000_000.0
    got = reset_seconds(value, fmt, now)
    assert got is not None
    if fmt == "http_date":
        assert got == pytest.approx(60.0)  # 22:14:20 is 60 s after 22:13:20 (= 1700000000)
    else:
        assert got == pytest.approx(expected)


def test_a_window_length_header_holds_sends_until_the_window_has_passed(tmp_path: Path) -> None:
    edits = (
        "  rate_limit: {requests: 100, per_seconds: 1}\n",
        "  rate_limit:\n    requests: 100\n    per_seconds: 1\n    headers:\n"
        "      remaining: X-Remaining\n      window: X-Interval-Milliseconds\n      window_unit: milliseconds\n",
    )
    spent = {"status": 201, "headers": {"X-Remaining": "0", "X-Interval-Milliseconds": "10000"}, "body": {"id": 1}}
    run = deliver(
        tmp_path, [spent, CREATED], *[edits], events=[lead(message_id="m-1"), lead("joe@acme.test", message_id="m-2")]
    )
    assert [o["outcome"] for o in run.outcomes] == [oc.DELIVERED, oc.DELIVERED]
    assert sum(run.sleeps) >= 9.9, run.sleeps  # the second send waited out the 10 s window


UPDATE_CONTRACT = (
    "        body: document\n",
    "        body: '{\"properties\": document}'\n        output:\n          schema: ./update.schema.json\n",
)


def test_an_update_with_its_own_contract_is_checked_against_it(tmp_path: Path) -> None:
    """The create's contract forbids a 'properties' wrapper; the update's contract requires it."""
    (tmp_path / "update.schema.json").write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["properties"],
                "additionalProperties": False,
                "properties": {"properties": {"type": "object", "required": ["email"]}},
            }
        ),
        encoding="utf-8",
    )
    conflict = {"status": 409, "body": {"code": "DUPLICATE", "message": "exists as id 5"}}
    run = deliver(tmp_path, [conflict, {"status": 200, "body": {"id": 5}}], UPDATE_CONTRACT)
    assert run.sent[1].body == {"properties": {"email": "jane@acme.test", "source": "signup"}}
    assert run.outcomes[0]["outcome"] == oc.DELIVERED


def test_an_update_that_breaks_its_own_contract_is_a_preset_bug(tmp_path: Path) -> None:
    (tmp_path / "update.schema.json").write_text(
        json.dumps({"type": "object", "required": ["fields"], "properties": {"fields": {"type": "object"}}}),
        encoding="utf-8",
    )
    conflict = {"status": 409, "body": {"code": "DUPLICATE", "message": "exists as id 5"}}
    run = deliver(tmp_path, [conflict], UPDATE_CONTRACT)
    [outcome] = run.outcomes
    assert outcome["outcome"] == oc.FAILED and outcome["cause"] == "output_invalid"
    assert "upsert.update.body" in outcome["detail"] and "'fields' is a required property" in outcome["detail"]


def test_a_dead_letter_with_a_query_key_is_replayed_with_the_live_key_once(tmp_path: Path) -> None:
    """The letter keeps the masked URL (key=***); a replay sends the live key, once, never the mask."""
    from engine.golden import ScriptedTransport
    from engine.runtime import Engine
    from engine.state.backend import MemoryState

    preset = load_preset(str(write_acme(tmp_path)))
    settings = resolve(preset.settings, {"api_key": KEY}, require=True)
    state = MemoryState()

    async def scenario() -> tuple[Any, Any, ScriptedTransport]:
        async def no_sleep(_: float) -> None:
            return None

        failing = ScriptedTransport("first run", [{"status": 503}] * 3)
        async with Engine(preset, settings, state=state, transport=failing, sleep=no_sleep) as engine:
            first = await engine.process(lead())
        replaying = ScriptedTransport("replay", [CREATED])
        async with Engine(preset, settings, state=state, transport=replaying, sleep=no_sleep) as engine:
            [replayed] = await engine.replay_dead_letters()
        return first, replayed, replaying

    first, replayed, replaying = asyncio.run(scenario())
    assert first.outcome == oc.DEAD_LETTERED
    [letter_request] = [r for r, _ in replaying.sent]
    assert letter_request.full_url() == f"https://api.acme.test/v1/contacts?key={KEY}"
    assert replayed.outcome == oc.DELIVERED
    assert replayed.request["url"] == "https://api.acme.test/v1/contacts?key=***"
    assert state.dead_letters().entries(preset.name) == []


class GatedTransport:
    """Holds every answer until released, and records what was sent: who is on the wire at once."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.release = asyncio.Event()

    async def send(self, request: Any) -> Any:
        from multidict import CIMultiDict

        from engine.delivery.transport import HttpResponse

        self.sent.append(request)
        await self.release.wait()
        return HttpResponse(201, CIMultiDict(), {"id": len(self.sent)})


NO_UPSERT = (
    """    upsert:
      strategy: on_conflict
      found: '{"id": $match(conflict.body.message, /id ([0-9]+)/).groups[0]}'
      update:
        method: PATCH
        url: "{settings.base_url}/v1/contacts/{found.id}"
        body: document
""",
    "",
)


@pytest.mark.parametrize("order_by, on_the_wire", [(None, 3), ("traits.email", 2)])
def test_order_by_keeps_one_persons_events_in_order_for_an_action_without_upsert(
    tmp_path: Path, order_by: str | None, on_the_wire: int
) -> None:
    """Two events for one email and one for another: with order_by, the second of the same email waits."""
    from engine.runtime import Engine

    edits = [
        NO_UPSERT,
        (
            "    - when: {status: 409, match: \"body.code = 'DUPLICATE'\"}\n      then: upsert\n"
            "      message: merged into the existing contact\n",
            "",
        ),
    ]
    if order_by:
        edits.append(
            (
                "  rate_limit: {requests: 100, per_seconds: 1}\n",
                f"  rate_limit: {{requests: 100, per_seconds: 1}}\n  order_by: {order_by}\n",
            )
        )
    preset = load_preset(str(write_acme(tmp_path, ACME_PRESET, *edits)))
    assert (preset.delivery.order_by is not None) == bool(order_by)

    async def scenario() -> tuple[list[Any], list[Any]]:
        transport = GatedTransport()
        async with Engine.from_preset(preset, {"api_key": KEY}, transport=transport) as engine:
            work = [
                asyncio.ensure_future(engine.process(event, i))
                for i, event in enumerate(
                    [lead("jane@acme.test", "m-1"), lead("JANE@acme.test", "m-2"), lead("joe@acme.test", "m-3")]
                )
            ]
            for _ in range(200):  # everything that can go out without an answer goes out
                await asyncio.sleep(0)
            held = list(transport.sent)
            transport.release.set()
            outcomes = await asyncio.gather(*work)
        return held, list(outcomes)

    held, outcomes = asyncio.run(scenario())
    assert [o.outcome for o in outcomes] == [oc.DELIVERED] * 3
    assert len(held) == on_the_wire
    if order_by:
        assert [r.body["email"] for r in held] == ["jane@acme.test", "joe@acme.test"]


def test_an_auth_errors_rule_judges_a_200_token_answer_without_an_access_token(tmp_path: Path) -> None:
    """As docs/concepts/preset-language.md says: a 2xx token answer holding an error instead of a token is matched by auth.errors."""
    rule = (
        "  rotates_refresh_token: false\n",
        "  rotates_refresh_token: false\n  errors:\n    - when: {status: 200, error: invalid_code}\n"
        "      then: reauthorise\n      message: the refresh token was refused\n",
    )
    refusal = {"status": 200, "body": {"error": "invalid_code"}}
    run = deliver(
        tmp_path,
        [refusal],
        REFRESH,
        rule,
        WITH_REFRESH,
        settings={"api_key": "s3cret-1", "client_id": "cid", "refresh_token": "rt-configured"},
    )
    [outcome] = run.outcomes
    assert (outcome["outcome"], outcome["cause"]) == (oc.DEAD_LETTERED, "reauthorisation_required")
    assert outcome["detail"] == "the refresh token was refused"
    assert len(run.sent) == 1  # refused once for good: not retried
