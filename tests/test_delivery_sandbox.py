"""Delivery end to end against the local Outreach sandbox, over real loopback HTTP.

Nothing here is mocked: the engine talks to ``engine.sandbox.outreach`` on
127.0.0.1 (port 0, or a port the sandbox picked itself), which rotates refresh
tokens, throttles minting to one token a minute, enforces a request quota,
dedupes prospects on email and injects the faults we queue. Assertions are
made on what the sandbox saw (``GET /_sandbox/state``), not on what the engine
says it did.

The acceptance run is done once per module (it takes about ten seconds,
almost all of it waiting for the small quota window) and several tests read
its result, so a regression names the property it broke.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ruamel.yaml import YAML

from engine import outcome as oc
from engine.language.settings import SettingsError
from engine.outcome import Outcome
from engine.runtime import Engine
from engine.sandbox.outreach import STATE_KEY, SandboxConfig, SandboxState, start_sandbox
from engine.state.dead_letters import MemoryDeadLetters
from engine.state.sqlite import SqliteState

REPO = Path(__file__).resolve().parents[1]
PRESET_FILE = REPO / "presets" / "outreach" / "lead-capture.yaml"
PRESET_NAME = "outreach/lead-capture"
EXAMPLE_EVENTS = REPO / "examples" / "lead-capture.ndjson"

# "Event Mapping" table of the product page: event -> tag applied besides "Signal".
LEAD_EVENTS = ["Demo Requested", "Signed Up", "Lead Submitted", "Form Submitted"]
TAG = {"Demo Requested": "demo-request", "Signed Up": "signup", "Lead Submitted": "lead", "Form Submitted": "form"}
# The three consent shapes found in the wild (docs/guides/writing-a-preset.md, "consent"), all granting marketing.
CONSENT_SHAPES = [{"canonical": {"marketing": True}}, {"marketing": True}, {"categories": ["necessary", "marketing"]}]

MERGED = "merged into the existing prospect"
ATTEMPT_LINE = re.compile(r"event (\d+) attempt (\d+): (GET|POST|PATCH) \S+ -> (\S+)")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def fast_preset(directory: Path, *, requests: int = 1000, per_seconds: float = 10) -> Path:
    """A copy of the shipped preset with test-sized backoff and a client bucket that never binds.

    Only ``delivery.retries.backoff`` and ``delivery.rate_limit`` change; the
    quota the engine must respect is the sandbox's, announced in its headers.
    """
    yaml = YAML()
    data = yaml.load(PRESET_FILE.read_text(encoding="utf-8"))
    backoff = data["delivery"]["retries"]["backoff"]
    backoff["initial_seconds"] = 0.05
    backoff["max_seconds"] = 0.5
    data["delivery"]["rate_limit"]["requests"] = requests
    data["delivery"]["rate_limit"]["per_seconds"] = per_seconds
    path = directory / "lead-capture-fast.yaml"
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(data, handle)
    return path


def unique_credentials() -> dict[str, str]:
    """Credentials no other text could contain by accident, so a leak check is meaningful."""
    return {
        "client_id": "test-client",
        "client_secret": f"cs-{secrets.token_hex(16)}",
        "refresh_token": f"rt-{secrets.token_hex(16)}",
    }


def record_issued_tokens(state: SandboxState) -> list[str]:
    """Every access and refresh token the sandbox hands out, including rotated-away ones."""
    issued: list[str] = []
    original = state.mint

    def mint(old_refresh_token: str, now: float) -> tuple[str, str]:
        access, refresh = original(old_refresh_token, now)
        issued.extend([access, refresh])
        return access, refresh

    state.mint = mint  # type: ignore[method-assign]
    return issued


def assert_no_secret(texts: Iterable[str], secret_values: Iterable[str]) -> None:
    blob = "\n".join(texts)
    values = [s for s in secret_values if s]
    assert values, "the leak check needs secrets to look for"
    for value in values:
        assert value not in blob, f"a secret ({value[:4]}...) leaked"


def email_for(i: int) -> str:
    return f"lead{i:02d}@company{i % 6}.com"


def lead_events(i: int) -> list[dict[str, Any]]:
    """Identify, then the lead event: the product page's "Example: Demo Requested" shape."""
    consent = CONSENT_SHAPES[i % len(CONSENT_SHAPES)]
    user = {"userId": f"user-{i:02d}", "anonymousId": f"anon-{i:02d}"}
    identify = {
        "type": "identify",
        "messageId": f"identify-{i:02d}",
        **user,
        "traits": {
            "email": email_for(i),
            "firstName": f"First{i}",
            "lastName": "Lead",
            "company": f"Company {i % 6}",
            "title": "Head of Growth",
        },
        "context": {"consent": consent},
    }
    track = {
        "type": "track",
        "event": LEAD_EVENTS[i % 4],
        "messageId": f"lead-{i:02d}",
        **user,
        "properties": {},
        "context": {"consent": consent},
    }
    return [identify, track]


@asynccontextmanager
async def running_sandbox(**overrides: Any) -> AsyncIterator[tuple[SandboxState, str, aiohttp.ClientSession]]:
    runner, base = await start_sandbox(SandboxConfig(**overrides), port=0)
    try:
        async with aiohttp.ClientSession() as admin:
            yield runner.app[STATE_KEY], base, admin
    finally:
        await runner.cleanup()


async def admin_state(admin: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with admin.get(f"{base}/_sandbox/state") as resp:
        assert resp.status == 200
        return await resp.json()


async def queue_faults(admin: aiohttp.ClientSession, base: str, faults: list[Any]) -> None:
    async with admin.post(f"{base}/_sandbox/faults", json={"faults": faults}) as resp:
        assert resp.status == 200, await resp.text()


def state_tables(state_dir: Path) -> dict[str, str]:
    """Every table of the state database as text, to look for secrets where none may be."""
    with contextlib.closing(sqlite3.connect(state_dir / "state.db")) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {name: "\n".join(repr(row) for row in conn.execute(f"SELECT * FROM {name}")) for name in names}


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


# --------------------------------------------------------------------------
# the acceptance run
# --------------------------------------------------------------------------

QUOTA, WINDOW = 15, 2.0
INJECTED_FAULTS: list[Any] = [500, 502, 503, "drop", "drop-after", "delay:0.2", 500]
RACE_LEAD, RETURNING_LEAD, MESSY_LEAD = 30, 5, 12


@dataclass
class AcceptanceRun:
    events: list[dict[str, Any]]
    outcomes: list[Outcome]
    state: dict[str, Any]
    engine_mints: int
    secrets: list[str]
    log_lines: list[str]
    state_tables: dict[str, str]
    elapsed: float


def acceptance_stream() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """40 distinct leads plus three second sightings of a known email.

    Returns the events and, for each gated duplicate, the messageId that must
    have its outcome before the duplicate is fed (so "existing first" is
    well-defined). The race pair is deliberately not gated.
    """
    events: list[dict[str, Any]] = []
    for i in range(40):
        events += lead_events(i)
        if i == RACE_LEAD:
            # Same person from a second device, right away: both creates race.
            events.append(
                {
                    "type": "track",
                    "event": "Signed Up",
                    "messageId": f"again-{i:02d}",
                    "userId": f"user-{i:02d}-phone",
                    "traits": {"email": email_for(i).capitalize()},
                    "properties": {},
                    "context": {"consent": CONSENT_SHAPES[0]},
                }
            )
    # The lead comes back days later: traits come from identity memory (userId).
    events.append(
        {
            "type": "track",
            "event": "Demo Requested",
            "messageId": f"again-{RETURNING_LEAD:02d}",
            "userId": f"user-{RETURNING_LEAD:02d}",
            "properties": {},
            "context": {"consent": CONSENT_SHAPES[0]},
        }
    )
    # A CRM import with the same address typed differently: normalised before the create.
    events.append(
        {
            "type": "track",
            "event": "Form Submitted",
            "messageId": f"again-{MESSY_LEAD:02d}",
            "userId": f"crm-import-{MESSY_LEAD:02d}",
            "properties": {},
            "traits": {"email": f"  {email_for(MESSY_LEAD).upper()} "},
            "context": {"consent": {"marketing": True}},
        }
    )
    gates = {
        f"again-{RETURNING_LEAD:02d}": f"lead-{RETURNING_LEAD:02d}",
        f"again-{MESSY_LEAD:02d}": f"lead-{MESSY_LEAD:02d}",
    }
    return events, gates


async def _acceptance(tmp: Path) -> AcceptanceRun:
    creds = unique_credentials()
    events, gates = acceptance_stream()
    handler = ListHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger("engine")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with running_sandbox(quota=QUOTA, window=WINDOW, **creds) as (state, base, admin):
            issued = record_issued_tokens(state)
            await queue_faults(admin, base, INJECTED_FAULTS)
            decided: dict[str, asyncio.Event] = {e["messageId"]: asyncio.Event() for e in events}

            def on_outcome(result: Outcome) -> None:
                decided[result.message_id].set()

            async def feed() -> AsyncIterator[dict[str, Any]]:
                for event in events:
                    gate = gates.get(event["messageId"])
                    if gate is not None:
                        await decided[gate].wait()
                    yield event

            settings = {**creds, "base_url": base}
            started = time.monotonic()
            outcomes: list[Outcome] = []
            async with Engine.from_preset(
                str(fast_preset(tmp)), settings, state=tmp / "state", on_outcome=on_outcome
            ) as engine:
                async for result in engine.process_many(feed()):
                    outcomes.append(result)
            elapsed = time.monotonic() - started
            snapshot = await admin_state(admin, base)
            return AcceptanceRun(
                events,
                outcomes,
                snapshot,
                engine.mints,
                [creds["client_secret"], creds["refresh_token"], *issued],
                handler.lines,
                state_tables(tmp / "state"),
                elapsed,
            )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory: pytest.TempPathFactory) -> AcceptanceRun:
    return asyncio.run(_acceptance(tmp_path_factory.mktemp("acceptance")))


def _by_message(run: AcceptanceRun) -> dict[str, Outcome]:
    return {o.message_id: o for o in run.outcomes}


def _prospect_by_email(run: AcceptanceRun) -> dict[str, dict[str, Any]]:
    return {p["attributes"]["emails"][0]: p for p in run.state["prospects"]}


def test_acceptance_every_event_has_one_outcome_in_order_and_every_lead_is_delivered(acceptance: AcceptanceRun) -> None:
    run = acceptance
    assert [o.index for o in run.outcomes] == list(range(len(run.events)))
    assert [o.message_id for o in run.outcomes] == [e["messageId"] for e in run.events]
    for event, result in zip(run.events, run.outcomes, strict=True):
        if event["type"] == "identify":
            assert (result.outcome, result.reason) == (oc.DROPPED, "event_not_mapped")
        else:
            # Faults recovered: 500/502/503, a reset connection, a lost answer and a slow one.
            assert result.outcome == oc.DELIVERED, result.to_dict()
            assert result.response and result.response["status"] in (200, 201)
    assert run.state["pending_faults"] == []  # every injected fault was actually served
    statuses = run.state["statuses"]
    assert statuses.count("drop") == 2  # "drop" and "drop-after"
    assert {500, 502, 503} <= set(statuses)


def test_acceptance_each_prospect_created_exactly_once(acceptance: AcceptanceRun) -> None:
    run = acceptance
    emails = [e for p in run.state["prospects"] for e in p["attributes"]["emails"]]
    assert len(emails) == len(set(emails)), "the same email is on two prospects"
    assert sorted(emails) == sorted(email_for(i) for i in range(40))
    assert len(run.state["prospects"]) == run.state["creates"] == 40


def test_acceptance_lost_create_answer_is_merged_not_duplicated(acceptance: AcceptanceRun) -> None:
    """ "drop-after": the create happened but its answer was lost; the retry's 422 is merged."""
    by_message = _by_message(acceptance)
    first_sightings = [f"lead-{i:02d}" for i in range(40) if i != RACE_LEAD]
    merged = [m for m in first_sightings if MERGED in (by_message[m].detail or "")]
    assert len(merged) == 1, merged
    assert by_message[merged[0]].attempts and by_message[merged[0]].attempts >= 4  # POST, POST(422), GET, PATCH


def test_acceptance_duplicates_are_merged_with_existing_tags_first(acceptance: AcceptanceRun) -> None:
    run = acceptance
    by_message = _by_message(run)
    prospects = _prospect_by_email(run)
    tags_of = {e["messageId"]: ["Signal", TAG[e["event"]]] for e in run.events if e["type"] == "track"}

    for lead in (RETURNING_LEAD, MESSY_LEAD):
        first, again = f"lead-{lead:02d}", f"again-{lead:02d}"
        prospect = prospects[email_for(lead)]
        assert MERGED in by_message[again].detail, by_message[again].to_dict()
        assert f"(id {prospect['id']})" in by_message[again].detail
        assert prospect["attributes"]["tags"] == tags_of[first] + [tags_of[again][1]]
        assert prospect["attributes"]["emails"] == [email_for(lead)]

    # The race: whichever create won, the loser merged into it, existing tags first.
    pair = [f"lead-{RACE_LEAD:02d}", f"again-{RACE_LEAD:02d}"]
    losers = [m for m in pair if MERGED in (by_message[m].detail or "")]
    assert len(losers) == 1, [by_message[m].to_dict() for m in pair]
    winner = next(m for m in pair if m not in losers)
    assert prospects[email_for(RACE_LEAD)]["attributes"]["tags"] == tags_of[winner] + [tags_of[losers[0]][1]]

    # Leads seen once keep exactly what they sent.
    for i in set(range(40)) - {RACE_LEAD, RETURNING_LEAD, MESSY_LEAD}:
        assert prospects[email_for(i)]["attributes"]["tags"] == tags_of[f"lead-{i:02d}"]


def test_acceptance_one_token_mint_and_no_auth_or_media_type_errors(acceptance: AcceptanceRun) -> None:
    run = acceptance
    # The sandbox throttles minting to one per minute: a second mint would
    # have been a 429 on the token endpoint and a minute's wait.
    assert run.state["mints"] == run.engine_mints == 1
    assert run.state["token_statuses"] == [200]
    assert 401 not in run.state["statuses"]
    assert 415 not in run.state["statuses"]


def test_acceptance_reading_rate_limit_headers_avoids_429s(acceptance: AcceptanceRun) -> None:
    """The quota is learnt from X-RateLimit-Remaining/Reset, not from 429s.

    The limiter reads the headers on every answer, counts the requests it has
    in flight against the server's Remaining (the server has not counted
    those yet), and holds every sender until the Reset once the window is
    spent. So it should never discover the quota by hitting it. One 429 is
    tolerated for timing at a window boundary (the sandbox's window starts at
    its first request and its Reset is rounded up to a whole second). An
    engine that ignored the headers would get a 429 for nearly every request
    over 15 in each 2-second window; one that forgot its in-flight requests
    got up to concurrency-1 per window (6-7 in this run).
    """
    statuses = acceptance.state["statuses"]
    assert acceptance.state["rate_limit"]["limit"] == QUOTA
    assert len(statuses) > 2 * QUOTA  # the run really spanned several quota windows
    assert statuses.count(429) <= 1, Counter(map(str, statuses))


def test_acceptance_no_secret_in_outcomes_logs_or_state(acceptance: AcceptanceRun) -> None:
    run = acceptance
    assert any("minted an access token" in line for line in run.log_lines)
    assert sum(1 for line in run.log_lines if ATTEMPT_LINE.search(line)) >= 40
    token_table = run.state_tables["tokens"]
    others = [text for name, text in run.state_tables.items() if name != "tokens"]
    assert run.state_tables["identity"] and run.state_tables["journal"]  # the other tables were really read
    assert_no_secret([json.dumps(o.to_dict()) for o in run.outcomes] + run.log_lines + others, run.secrets)
    # The token table is the one place a refresh token must be, and it is the current one.
    assert run.state["refresh_tokens"][0] in token_table
    assert run.secrets[0] not in token_table  # the client secret is never stored


def test_acceptance_finished_within_budget(acceptance: AcceptanceRun) -> None:
    # 40+ requests through a 15-per-2-s quota need a few windows, not minutes:
    # no retry or rate-limit wait may fall back to the shipped 60 s ceilings.
    assert acceptance.elapsed < 30


# --------------------------------------------------------------------------
# rotation across runs, secrets in logs
# --------------------------------------------------------------------------


def test_second_run_on_same_state_uses_the_persisted_rotated_refresh_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        creds = unique_credentials()
        # mint_limit=0: this test counts mints itself and must not wait a minute between them.
        async with running_sandbox(mint_limit=0, **creds) as (state, base, admin):
            settings = {**creds, "base_url": base}
            preset = str(fast_preset(tmp_path))

            async def run(leads: range, state_dir: Path = tmp_path / "state") -> tuple[list[Outcome], int]:
                events = [e for i in leads for e in lead_events(i)]
                async with Engine.from_preset(preset, settings, state=state_dir) as engine:
                    results = [o async for o in engine.process_many(events)]
                return results, engine.mints

            first, mints = await run(range(3))
            assert mints == 1 and all(o.outcome != oc.DEAD_LETTERED for o in first)
            after_first = await admin_state(admin, base)
            assert creds["refresh_token"] not in after_first["refresh_tokens"]  # rotated away upstream
            stored = SqliteState(tmp_path / "state").tokens(creds["client_id"]).load(creds["refresh_token"])
            assert stored is not None, "the rotated refresh token was not persisted"
            assert stat.S_IMODE((tmp_path / "state" / "state.db").stat().st_mode) == 0o600
            assert stored.refresh_token == after_first["refresh_tokens"][0]

            # Same settings (still the original, now dead, refresh token), same state:
            # the live access token is reused, nothing is minted.
            second, mints = await run(range(3, 5))
            assert mints == 0
            assert [o.outcome for o in second if o.outcome != oc.DROPPED] == [oc.DELIVERED] * 2

            # Upstream forgets the access token: one 401, one refresh with the persisted token.
            async with admin.post(f"{base}/_sandbox/expire-tokens") as resp:
                assert resp.status == 200
            third, mints = await run(range(5, 8))
            assert mints == 1
            assert [o.outcome for o in third if o.outcome != oc.DROPPED] == [oc.DELIVERED] * 3
            final = await admin_state(admin, base)
            assert final["token_statuses"] == [200, 200]  # never an invalid_grant
            assert final["mints"] == 2
            assert 401 in final["statuses"]
            assert len(final["prospects"]) == 8

            # Without the persisted chain the configured token is refused: rotation is real.
            lost, mints = await run(range(8, 9), tmp_path / "fresh-state")
            assert mints == 0
            assert [o.cause for o in lost if o.outcome != oc.DROPPED] == ["reauthorisation_required"]

    asyncio.run(scenario())


def test_no_secret_in_outcomes_or_logs_through_refresh_retries_and_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI stops "engine" from propagating when it runs in-process;
    # make sure caplog really sees this test's records.
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)
    caplog.set_level(logging.INFO, logger="engine")

    async def scenario() -> tuple[list[str], list[str]]:
        creds = unique_credentials()
        wrong_secret = f"wrong-{secrets.token_hex(12)}"
        async with running_sandbox(mint_limit=0, **creds) as (state, base, admin):
            issued = record_issued_tokens(state)
            settings = {**creds, "base_url": base}
            preset = str(fast_preset(tmp_path))
            texts: list[str] = []
            async with Engine.from_preset(preset, settings, state=tmp_path / "state") as engine:
                texts += [json.dumps(o.to_dict()) async for o in engine.process_many(lead_events(0) + lead_events(1))]
                async with admin.post(f"{base}/_sandbox/expire-tokens") as resp:
                    assert resp.status == 200
                await queue_faults(admin, base, [503, "drop", 500, 500, 500, 500, 500])
                texts += [json.dumps(o.to_dict()) async for o in engine.process_many(lead_events(2) + lead_events(3))]
                texts += [json.dumps(o.to_dict()) for o in await engine.replay_dead_letters()]
                assert engine.mints == 2
            bad = {**settings, "client_secret": wrong_secret}
            async with Engine.from_preset(preset, bad, dead_letters=MemoryDeadLetters()) as engine:
                refused = await engine.process(lead_events(4)[0] | {"type": "track", "event": "Signed Up"})
                assert refused.cause == "reauthorisation_required"
                assert "client credentials" in (refused.detail or "")
                texts.append(json.dumps(refused.to_dict()))
            texts += [text for name, text in state_tables(tmp_path / "state").items() if name != "tokens"]
            return texts, [creds["client_secret"], creds["refresh_token"], wrong_secret, *issued]

    texts, secret_values = asyncio.run(scenario())
    logs = [record.getMessage() for record in caplog.records] + [caplog.text]
    assert any("attempt" in line and "-> 401 => refresh_auth" in line for line in logs)
    assert any("minted an access token" in line for line in logs)
    assert any("-> 500 => retry" in line for line in logs)
    assert len(secret_values) == 3 + 4  # two mints: two access + two refresh tokens
    assert_no_secret(texts + logs, secret_values)


def test_replay_of_a_letter_that_died_during_the_upsert_lookup_still_merges(tmp_path: Path) -> None:
    """A letter must be replayable from the event's first request, not from the last one tried.

    Here the create answered the duplicate 422 and the lookup then failed
    until retries ran out. Replaying only that last request (a bare GET of
    the prospect list) would answer 200, count as "delivered", delete the
    letter and never merge the new tag: the event would be lost.
    """

    async def scenario() -> None:
        creds = unique_credentials()
        async with running_sandbox(**creds) as (state, base, admin):
            settings = {**creds, "base_url": base}
            consent = {"consent": CONSENT_SHAPES[0]}
            async with Engine.from_preset(str(fast_preset(tmp_path)), settings, state=tmp_path / "state") as engine:
                first = await engine.process(
                    {
                        "type": "track",
                        "event": "Demo Requested",
                        "messageId": "m1",
                        "userId": "u1",
                        "traits": {"email": "dana@acme.com"},
                        "context": consent,
                    }
                )
                assert first.outcome == oc.DELIVERED
                # "delay:0" lets the create through (it answers the duplicate 422); the lookup then fails 5 times.
                await queue_faults(admin, base, ["delay:0", 500, 500, 500, 500, 500])
                second = await engine.process(
                    {
                        "type": "track",
                        "event": "Signed Up",
                        "messageId": "m2",
                        "userId": "u2",
                        "traits": {"email": "dana@acme.com"},
                        "context": consent,
                    }
                )
                assert second.outcome == oc.DEAD_LETTERED
                assert len(engine.dead_letters.entries()) == 1
                replayed = await engine.replay_dead_letters()
                assert [o.outcome for o in replayed] == [oc.DELIVERED]
                assert MERGED in (replayed[0].detail or "")
                assert engine.dead_letters.entries() == []
            snapshot = await admin_state(admin, base)
            assert len(snapshot["prospects"]) == 1
            assert snapshot["prospects"][0]["attributes"]["tags"] == ["Signal", "demo-request", "signup"]

    asyncio.run(scenario())


def test_plain_http_to_a_non_loopback_host_is_refused_by_the_embedding_api() -> None:
    creds = unique_credentials()
    with pytest.raises(SettingsError) as info:
        Engine.from_preset(PRESET_NAME, {**creds, "base_url": "http://api.outreach.example"})
    message = str(info.value)
    assert "\n" not in message and "plain http" in message and "base_url" in message
    # Loopback is the sandbox exception; it must stay accepted.
    Engine.from_preset(PRESET_NAME, {**creds, "base_url": "http://127.0.0.1:9"})


# --------------------------------------------------------------------------
# the CLI, end to end
# --------------------------------------------------------------------------


class ThreadedSandbox:
    """The sandbox on its own event loop in a thread, so subprocesses can reach it."""

    def __init__(self, **overrides: Any) -> None:
        self.config = SandboxConfig(**overrides)
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self.issued: list[str] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="outreach-sandbox", daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            runner, self.base_url = self.loop.run_until_complete(start_sandbox(self.config, port=0))
            self.issued = record_issued_tokens(runner.app[STATE_KEY])
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

    def __enter__(self) -> ThreadedSandbox:
        self._thread.start()
        assert self._ready.wait(15), "sandbox did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base_url}/_sandbox/{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def state(self) -> dict[str, Any]:
        return self.admin("GET", "state")

    def faults(self, *faults: Any) -> None:
        self.admin("POST", "faults", {"faults": list(faults)})


def write_settings(path: Path, base_url: str, creds: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}: {v}\n" for k, v in {**creds, "base_url": base_url}.items()), encoding="utf-8")
    return path


def cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def example_events() -> list[dict[str, Any]]:
    return [json.loads(line) for line in EXAMPLE_EVENTS.read_text(encoding="utf-8").splitlines() if line.strip()]


# What the shipped example stream must do (see tests/test_examples.py for why each is dropped).
EXAMPLE_DELIVERED = {
    "msg-005": "jane.doe@acme.com",
    "msg-007": "marcus.lee@northwind.io",
    "msg-009": "priya.shah@globex.com",
    "msg-010": "tomas.novak@initech.cz",
    "msg-013": "amara.okafor@umbrella.ng",
}
EXAMPLE_DROP_REASONS = {"msg-014": "no_consent", "msg-015": "not_identified", "msg-016": "invalid_email"}


def _store_secrets(state_dir: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(state_dir / "state.db")) as conn:
        rows = conn.execute("SELECT refresh_token, access_token FROM tokens").fetchall()
    return [s for row in rows for s in row if s]


def test_cli_run_against_the_sandbox_end_to_end(tmp_path: Path) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:  # the default one-mint-a-minute throttle stays on
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        state_dir = tmp_path / "state"
        first = cli("run", PRESET_NAME, "--events", EXAMPLE_EVENTS, "--settings", settings, "--state", state_dir)
        assert first.returncode == 0, first.stderr
        assert "Traceback" not in first.stderr
        lines = json_lines(first.stdout)
        events = example_events()
        assert [line["index"] for line in lines] == list(range(len(events)))
        assert [line["messageId"] for line in lines] == [e["messageId"] for e in events]
        for line in lines:
            if line["messageId"] in EXAMPLE_DELIVERED:
                assert line["outcome"] == "delivered" and line["response"]["status"] == 201, line
                assert line["request"]["headers"]["Authorization"] == "Bearer ***"
            else:
                assert line["outcome"] == "dropped", line
                assert line["reason"] == EXAMPLE_DROP_REASONS.get(line["messageId"], "event_not_mapped")
        assert re.fullmatch(
            r"signal-engine: 19 event\(s\) in [0-9.]+s: 5 delivered, 14 dropped \(11 event_not_mapped, "
            r"1 invalid_email, 1 no_consent, 1 not_identified\); 1 access token\(s\) minted",
            first.stderr.strip().splitlines()[-1],
        )
        after_first = sandbox.state()
        assert sorted(p["attributes"]["emails"][0] for p in after_first["prospects"]) == sorted(
            EXAMPLE_DELIVERED.values()
        )
        assert after_first["mints"] == 1

        # The same stream again (a restart, or a producer re-sending): the journal says
        # every lead was delivered, so nothing is sent and each still gets its one outcome.
        again = cli("run", PRESET_NAME, "--events", EXAMPLE_EVENTS, "--settings", settings, "--state", state_dir)
        assert again.returncode == 0, again.stderr
        repeated = json_lines(again.stdout)
        assert [line["messageId"] for line in repeated] == [e["messageId"] for e in events]
        skipped = [r for r in repeated if r["outcome"] == "delivered"]
        assert {r["messageId"] for r in skipped} == set(EXAMPLE_DELIVERED)
        assert all(r["attempts"] == 0 and "already delivered" in r["detail"] and "response" not in r for r in skipped)
        assert sandbox.state()["statuses"] == after_first["statuses"]  # not one request more

        # New events for the same people, verbose, same state: every lead is now a duplicate
        # and is merged; the persisted access token is reused (a second mint would be throttled).
        renamed = tmp_path / "later.ndjson"
        renamed.write_text(
            "".join(json.dumps({**e, "messageId": f"{e['messageId']}-later"}) + "\n" for e in events), encoding="utf-8"
        )
        second = cli("run", PRESET_NAME, "--events", renamed, "--settings", settings, "--state", state_dir, "--verbose")
        assert second.returncode == 0, second.stderr
        assert "Traceback" not in second.stderr
        results = json_lines(second.stdout)
        delivered = [r for r in results if r["outcome"] == "delivered"]
        assert {r["messageId"] for r in delivered} == {f"{m}-later" for m in EXAMPLE_DELIVERED}
        assert all(MERGED in r["detail"] and r["attempts"] == 3 for r in delivered), delivered
        attempts = [m.groups() for m in ATTEMPT_LINE.finditer(second.stderr)]
        assert len(attempts) == sum(r["attempts"] for r in delivered)  # every attempt logged
        for r in delivered:
            mine = [(a[2], a[3]) for a in attempts if int(a[0]) == r["index"]]
            assert mine == [("POST", "422"), ("GET", "200"), ("PATCH", "200")]
        assert re.fullmatch(
            r"signal-engine: 19 event\(s\) in [0-9.]+s: 5 delivered, 14 dropped \(11 event_not_mapped, "
            r"1 invalid_email, 1 no_consent, 1 not_identified\); 0 access token\(s\) minted",
            second.stderr.strip().splitlines()[-1],
        )
        final = sandbox.state()
        assert final["mints"] == 1 and len(final["prospects"]) == 5
        assert 401 not in final["statuses"] and 415 not in final["statuses"]

        secret_values = [
            creds["client_secret"],
            creds["refresh_token"],
            *final["refresh_tokens"],
            *sandbox.issued,
            *_store_secrets(state_dir),
        ]
        assert_no_secret(
            [first.stdout, first.stderr, again.stdout, again.stderr, second.stdout, second.stderr], secret_values
        )


def test_cli_dead_letters_list_and_replay(tmp_path: Path) -> None:
    creds = unique_credentials()
    events = tmp_path / "jane.ndjson"
    lines = EXAMPLE_EVENTS.read_text(encoding="utf-8").splitlines()
    events.write_text("\n".join(lines[3:5]) + "\n", encoding="utf-8")  # identify + Demo Requested
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        state_dir = tmp_path / "state"
        sandbox.faults(500, 500, 500, 500, 500)  # max_attempts is 5
        run = cli("run", PRESET_NAME, "--events", events, "--settings", settings, "--state", state_dir)
        assert run.returncode == 1, run.stderr
        out = json_lines(run.stdout)
        assert [o["outcome"] for o in out] == ["dropped", "dead_lettered"]
        assert out[1]["cause"] == "http_500" and out[1]["attempts"] == 5
        assert "gave up after 5 attempts" in out[1]["detail"]
        assert re.fullmatch(
            r"signal-engine: 2 event\(s\) in [0-9.]+s: 1 dropped \(1 event_not_mapped\), "
            r"1 dead_lettered \(1 http_500\); 1 access token\(s\) minted",
            run.stderr.strip().splitlines()[-1],
        )
        assert sandbox.state()["prospects"] == []

        listed = cli("dlq", "list", PRESET_NAME, "--state", state_dir)
        assert listed.returncode == 0, listed.stderr
        letters = json_lines(listed.stdout)
        assert len(letters) == 1
        letter = letters[0]
        assert letter["messageId"] == "msg-005" and letter["cause"] == "http_500"
        assert letter["request"]["headers"]["Authorization"] == "Bearer ***"  # masked
        assert letter["request"]["body"]["data"]["attributes"]["emails"] == ["jane.doe@acme.com"]
        assert "1 dead letter(s) for outreach/lead-capture" in listed.stderr

        replay = cli("dlq", "replay", PRESET_NAME, "--settings", settings, "--state", state_dir)
        assert replay.returncode == 0, replay.stderr
        assert [o["outcome"] for o in json_lines(replay.stdout)] == ["delivered"]
        assert "replayed 1, delivered 1, 0 left" in replay.stderr
        state = sandbox.state()
        assert [p["attributes"]["emails"] for p in state["prospects"]] == [["jane.doe@acme.com"]]
        assert state["mints"] == 1  # the replay reused the persisted access token

        empty = cli("dlq", "list", PRESET_NAME, "--state", state_dir)
        assert empty.returncode == 0 and empty.stdout.strip() == ""
        assert "0 dead letter(s)" in empty.stderr

        outputs = [p.stdout + p.stderr for p in (run, listed, replay, empty)]
        assert all("Traceback" not in text for text in outputs)
        secret_values = [creds["client_secret"], creds["refresh_token"], *sandbox.issued, *_store_secrets(state_dir)]
        assert_no_secret(outputs + [state_tables(state_dir)["dead_letters"]], secret_values)


def test_cli_invalid_grant_dead_letters_everything_without_retrying_the_token_endpoint(tmp_path: Path) -> None:
    creds = unique_credentials()
    wrong = {**creds, "refresh_token": f"revoked-{secrets.token_hex(12)}"}
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, wrong)
        state_dir = tmp_path / "state"
        run = cli("run", PRESET_NAME, "--events", EXAMPLE_EVENTS, "--settings", settings, "--state", state_dir)
        assert run.returncode == 1
        assert "Traceback" not in run.stderr
        results = json_lines(run.stdout)
        assert len(results) == len(example_events())
        letters = [r for r in results if r["outcome"] == "dead_lettered"]
        assert {r["messageId"] for r in letters} == set(EXAMPLE_DELIVERED)
        for r in letters:
            assert r["cause"] == "reauthorisation_required"
            assert "invalid_grant" in r["detail"] and "Re-authorise" in r["detail"]
        assert "Re-authorise" in run.stderr  # a person sees what to do without reading JSON
        state = sandbox.state()
        assert state["token_statuses"] == [400]  # asked once, never again
        assert state["statuses"] == []  # nothing sent without a token
        # Not lost: waiting in the dead-letter store for the re-authorisation.
        listed = cli("dlq", "list", PRESET_NAME, "--state", state_dir)
        assert {e["messageId"] for e in json_lines(listed.stdout)} == set(EXAMPLE_DELIVERED)
        assert_no_secret(
            [run.stdout, run.stderr, listed.stdout, listed.stderr], [wrong["client_secret"], wrong["refresh_token"]]
        )


def test_cli_refuses_plain_http_to_a_non_loopback_host(tmp_path: Path) -> None:
    creds = unique_credentials()
    settings = write_settings(tmp_path / "settings.yaml", "http://api.outreach.example", creds)
    run = cli("run", PRESET_NAME, "--events", EXAMPLE_EVENTS, "--settings", settings, "--state", tmp_path / "state")
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    # Located like every settings problem: file:line, the setting, why, what to do.
    assert lines[0].startswith(f"{settings}:4: setting 'base_url' plain http"), lines[0]
    assert "use https" in lines[0]
    assert not (tmp_path / "state").exists()
