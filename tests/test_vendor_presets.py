"""The HubSpot, Salesloft and Close presets, end to end: the real engine against each vendor's local fake.

Nothing is mocked on the wire: the engine talks HTTP on loopback to the
sandbox of ``engine/sandbox/``, which checks the auth header and the body the
way the vendor does, answers with the vendor's duplicate errors and rate-limit
headers, and records what it holds. Assertions are made on what the fake saw.
Time is fake and shared: the engine's waits move the fake's clock, so
rate-limit windows pass without real sleeps.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from engine import outcome as oc
from engine.runtime import Engine
from engine.sandbox import close, hubspot, outreach, salesloft
from engine.sandbox.common import parse_fault
from engine.state.dead_letters import MemoryDeadLetters
from engine.state.token_store import MemoryTokenStore
from fakes import FakeTime

REPO = Path(__file__).resolve().parents[1]
CONSENT = {"consent": {"canonical": {"marketing": True}}}


def lead(event: str, mid: str, **traits: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": event,
        "messageId": mid,
        "userId": "user-204",
        "traits": traits,
        "context": CONSENT,
    }


MARCUS = {"email": "marcus.lee@northwind.io", "firstName": "Marcus", "lastName": "Lee", "company": "Northwind Traders"}
SAME_LEAD_TWICE = [
    lead("Form Submitted", "twice-1", **MARCUS, city="London", country="United Kingdom"),
    lead(
        "Demo Requested",
        "twice-2",
        **{**MARCUS, "email": " Marcus.Lee@Northwind.io"},
        title="VP Sales",
        phone="020 7946 0958",
        country="GB",
    ),
]


@asynccontextmanager
async def delivering(
    module: Any, preset: str, settings: dict[str, Any], **config: Any
) -> AsyncIterator[tuple[Any, Engine, FakeTime]]:
    """The vendor's fake on loopback, and an engine for ``preset`` pointed at it, sharing one fake clock."""
    runner, base = await module.start_sandbox(module.SandboxConfig(**config), port=0)
    fake = FakeTime()
    state = runner.app[module.STATE_KEY]
    wall = time.time()
    state.clock = lambda: wall + (fake.now - 1_000.0)
    engine = Engine.from_preset(
        preset,
        {**settings, "base_url": base},
        token_store=MemoryTokenStore(),
        dead_letters=MemoryDeadLetters(),
        sleep=fake.sleep,
        clock=fake.monotonic,
    )
    try:
        async with engine:
            yield state, engine, fake
    finally:
        await runner.cleanup()


async def deliver(engine: Engine, events: list[dict[str, Any]]) -> list[Any]:
    return [outcome async for outcome in engine.process_many(events)]


def text_of(outcomes: list[Any]) -> str:
    return json.dumps([o.to_dict() for o in outcomes])


# --------------------------------------------------------------------------
# HubSpot
# --------------------------------------------------------------------------

HUBSPOT = {"access_token": "sandbox-private-app-token"}


def test_hubspot_same_lead_twice_is_one_contact_created_then_patched() -> None:
    async def scenario() -> None:
        settings = {**HUBSPOT, "tags_property": "signal_tags"}
        async with delivering(hubspot, "hubspot/contacts", settings, custom_properties=["signal_tags"]) as (
            state,
            engine,
            _,
        ):
            outcomes = await deliver(engine, SAME_LEAD_TWICE)
        assert [o.outcome for o in outcomes] == [oc.DELIVERED, oc.DELIVERED], text_of(outcomes)
        assert outcomes[1].detail == "Duplicate email, merged into the existing contact (id 1)"
        assert [(r["method"], r["path"], r["status"]) for r in state.requests] == [
            ("POST", "/crm/v3/objects/contacts", 201),
            ("POST", "/crm/v3/objects/contacts", 409),
            ("PATCH", "/crm/v3/objects/contacts/1", 200),
        ]
        assert (state.creates, state.updates, len(state.contacts)) == (1, 1, 1)
        assert state.contacts["1"] == {
            "email": "marcus.lee@northwind.io",
            "firstname": "Marcus",
            "lastname": "Lee",
            "company": "Northwind Traders",
            "city": "London",
            "country": "GB",
            "lifecyclestage": "lead",
            "signal_tags": "Signal;form",
            "jobtitle": "VP Sales",
            "mobilephone": "+442079460958",
        }
        assert "sandbox-private-app-token" not in text_of(outcomes)

    asyncio.run(scenario())


def test_hubspot_wrong_token_is_dead_lettered_for_replay_and_the_token_is_never_shown() -> None:
    async def scenario() -> None:
        async with delivering(hubspot, "hubspot/contacts", {"access_token": "pat-na1-wrong-token"}) as (
            state,
            engine,
            _,
        ):
            outcomes = await deliver(engine, SAME_LEAD_TWICE[:1])
        (outcome,) = outcomes
        assert (outcome.outcome, outcome.cause, outcome.attempts) == (oc.DEAD_LETTERED, oc.AUTH_REJECTED, 1)
        assert "access_token setting" in outcome.detail and "dlq replay" in outcome.detail
        assert outcome.request["headers"]["Authorization"] == "Bearer ***"
        assert "pat-na1-wrong-token" not in text_of(outcomes)
        assert state.contacts == {}

    asyncio.run(scenario())


def test_hubspot_remaining_zero_waits_one_interval_instead_of_collecting_429s() -> None:
    async def scenario() -> None:
        events = [lead("Lead Submitted", f"rl-{i}", email=f"person{i}@acme.com") for i in range(3)]
        async with delivering(hubspot, "hubspot/contacts", HUBSPOT, quota=2, window=10) as (state, engine, fake):
            # One after the other, so each answer's headers are known before the next send.
            outcomes = [await engine.process(event, i) for i, event in enumerate(events)]
        assert [o.outcome for o in outcomes] == [oc.DELIVERED] * 3, text_of(outcomes)
        assert state.statuses == [201, 201, 201]
        assert state.creates == 3
        assert sum(fake.sleeps) >= 9.9  # X-HubSpot-RateLimit-Interval-Milliseconds: 10000

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# Salesloft
# --------------------------------------------------------------------------

SALESLOFT = {"client_id": "sandbox-client", "client_secret": "sandbox-secret", "refresh_token": "sandbox-refresh-token"}


def test_salesloft_same_lead_twice_is_one_person_with_merged_tags() -> None:
    async def scenario() -> None:
        runner, base = await salesloft.start_sandbox(salesloft.SandboxConfig(), port=0)
        try:
            engine = Engine.from_preset(
                "salesloft/people",
                {**SALESLOFT, "base_url": base, "accounts_url": base},
                token_store=MemoryTokenStore(),
                dead_letters=MemoryDeadLetters(),
            )
            async with engine:
                outcomes = await deliver(engine, SAME_LEAD_TWICE)
            state = runner.app[salesloft.STATE_KEY]
        finally:
            await runner.cleanup()
        assert [o.outcome for o in outcomes] == [oc.DELIVERED, oc.DELIVERED], text_of(outcomes)
        assert outcomes[1].detail == "Duplicate email, merged into the existing person (id 1)"
        assert [(r["method"], r["path"], r["status"]) for r in state.requests] == [
            ("POST", "/v2/people", 200),
            ("POST", "/v2/people", 422),
            ("GET", "/v2/people", 200),
            ("PUT", "/v2/people/1", 200),
        ]
        assert state.requests[2]["query"] == "email_addresses[]=marcus.lee@northwind.io"
        (person,) = state.people.values()
        assert person["tags"] == ["Signal", "form", "demo-request"]
        assert (person["title"], person["mobile_phone"], person["country"]) == ("VP Sales", "+442079460958", "GB")
        # One token minted, and the refresh token it came with replaced the configured one.
        assert state.mints == 1
        assert "sandbox-refresh-token" not in state.refresh_tokens
        for secret in ("sandbox-secret", "sandbox-refresh-token", *state.refresh_tokens, *state.access_tokens):
            assert secret not in text_of(outcomes)

    asyncio.run(scenario())


def test_salesloft_expired_access_token_is_refreshed_with_the_rotated_refresh_token() -> None:
    async def scenario() -> None:
        runner, base = await salesloft.start_sandbox(salesloft.SandboxConfig(), port=0)
        state = runner.app[salesloft.STATE_KEY]
        try:
            engine = Engine.from_preset(
                "salesloft/people",
                {**SALESLOFT, "base_url": base, "accounts_url": base},
                token_store=MemoryTokenStore(),
                dead_letters=MemoryDeadLetters(),
            )
            async with engine:
                first = await engine.process(lead("Signed Up", "exp-1", email="a@acme.com"))
                state.access_tokens.clear()  # the two hours are up
                second = await engine.process(lead("Signed Up", "exp-2", email="b@acme.com"))
        finally:
            await runner.cleanup()
        assert (first.outcome, second.outcome) == (oc.DELIVERED, oc.DELIVERED)
        assert state.token_statuses == [200, 200]  # the second refresh used the rotated token
        assert [p["email_address"] for p in state.people.values()] == ["a@acme.com", "b@acme.com"]

    asyncio.run(scenario())


def test_salesloft_spent_refresh_token_dead_letters_for_reauthorisation() -> None:
    async def scenario() -> None:
        runner, base = await salesloft.start_sandbox(salesloft.SandboxConfig(refresh_token="another-token"), port=0)
        state = runner.app[salesloft.STATE_KEY]
        try:
            engine = Engine.from_preset(
                "salesloft/people",
                {**SALESLOFT, "base_url": base, "accounts_url": base},
                token_store=MemoryTokenStore(),
                dead_letters=MemoryDeadLetters(),
            )
            async with engine:
                outcome = await engine.process(lead("Signed Up", "grant-1", email="a@acme.com"))
        finally:
            await runner.cleanup()
        assert (outcome.outcome, outcome.cause) == (oc.DEAD_LETTERED, "reauthorisation_required")
        assert state.token_statuses == [400] and state.people == {}

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# Close
# --------------------------------------------------------------------------

CLOSE = {"api_key": "sandbox-api-key"}


def test_close_same_lead_twice_is_one_lead_because_the_engine_looks_first() -> None:
    async def scenario() -> None:
        async with delivering(close, "close/leads", CLOSE) as (state, engine, _):
            outcomes = await deliver(engine, SAME_LEAD_TWICE)
        assert [o.outcome for o in outcomes] == [oc.DELIVERED, oc.DELIVERED], text_of(outcomes)
        assert outcomes[1].detail == "updated the existing record found by the lookup (id cont_sandbox0001)"
        assert [(r["method"], r["path"], r["status"]) for r in state.requests] == [
            ("POST", "/api/v1/data/search/", 200),
            ("POST", "/api/v1/lead/", 200),
            ("POST", "/api/v1/data/search/", 200),
            ("PUT", "/api/v1/contact/cont_sandbox0001/", 200),
        ]
        assert (len(state.leads), len(state.contacts), state.creates, state.updates) == (1, 1, 1, 1)
        (lead_record,) = state.snapshot()["leads"]
        assert lead_record["name"] == "Northwind Traders"
        assert lead_record["addresses"] == [{"label": "business", "city": "London", "country": "GB"}]
        (contact,) = lead_record["contacts"]
        assert (contact["name"], contact["title"]) == ("Marcus Lee", "VP Sales")
        assert [e["email"] for e in contact["emails"]] == ["marcus.lee@northwind.io"]
        assert [(p["phone"], p["type"]) for p in contact["phones"]] == [("+442079460958", "mobile")]
        assert "sandbox-api-key" not in text_of(outcomes)

    asyncio.run(scenario())


def test_close_repeated_lead_in_one_batch_is_still_one_lead() -> None:
    async def scenario() -> None:
        events = [
            lead("Signed Up", f"batch-{i}", email="jane.doe@acme.com", phone=f"+4477009001{i:02d}") for i in range(4)
        ]
        async with delivering(close, "close/leads", CLOSE) as (state, engine, _):
            outcomes = await deliver(engine, events)
        assert [o.outcome for o in outcomes] == [oc.DELIVERED] * 4, text_of(outcomes)
        assert (len(state.leads), state.creates, state.updates) == (1, 1, 3)
        (contact,) = state.contacts.values()
        assert [p["phone"] for p in contact["phones"]] == [f"+4477009001{i:02d}" for i in range(4)]

    asyncio.run(scenario())


def test_close_spent_window_read_from_its_ratelimit_header_is_waited_out_without_a_429() -> None:
    """``ratelimit: limit=1, remaining=0, reset=5`` says the group is spent: the next call waits, no 429.

    (A 429's ``error.rate_reset`` wait is pinned by the golden case close/leads/delivery-rate-limited.)
    """

    async def scenario() -> None:
        events = [lead("Lead Submitted", f"rl-{i}", email=f"person{i}@acme.com") for i in range(2)]
        async with delivering(close, "close/leads", CLOSE, quota=1, window=5) as (state, engine, fake):
            # One after the other: before its first answer the engine cannot know a budget of 1.
            outcomes = await deliver(engine, events[:1]) + await deliver(engine, events[1:])
        assert [o.outcome for o in outcomes] == [oc.DELIVERED] * 2, text_of(outcomes)
        assert state.statuses.count(429) == 0
        assert len(state.leads) == 2
        assert sum(fake.sleeps) >= 4.0, fake.sleeps  # each group's 5 s window was waited out

    asyncio.run(scenario())


def test_close_wrong_api_key_is_dead_lettered_for_replay_at_the_lookup() -> None:
    async def scenario() -> None:
        async with delivering(close, "close/leads", {"api_key": "not-the-key"}) as (state, engine, _):
            (outcome,) = await deliver(engine, SAME_LEAD_TWICE[:1])
        assert (outcome.outcome, outcome.cause) == (oc.DEAD_LETTERED, oc.AUTH_REJECTED)
        assert "api_key setting" in outcome.detail and "dlq replay" in outcome.detail
        assert outcome.request["url"].endswith("/api/v1/data/search/")
        assert outcome.request["headers"]["Authorization"] == "Basic ***"
        assert state.leads == {}

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# a wrong static key, fixed, then replayed: through the real command line
# --------------------------------------------------------------------------


class _SandboxThread:
    """A vendor's sandbox on its own event loop in a thread, so CLI subprocesses can reach it."""

    def __init__(self, module: Any, **config: Any) -> None:
        import threading

        self.module, self.config = module, config
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.base = ""
        self.state: Any = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner, self.base = self.loop.run_until_complete(
            self.module.start_sandbox(self.module.SandboxConfig(**self.config), port=0)
        )
        self.state = runner.app[self.module.STATE_KEY]
        self.ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

    def __enter__(self) -> _SandboxThread:
        self.thread.start()
        assert self.ready.wait(15), "sandbox did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)

    def read(self, what: Any) -> Any:
        """``what(state)`` on the sandbox's own loop, so a test never reads it mid-request."""

        async def call() -> Any:
            return what(self.state)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(15)


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


LEADS = [
    lead(
        "Demo Requested",
        f"key-{i}",
        email=f"person{i}@replay.test",
        firstName=f"First{i}",
        lastName="Lee",
        company=f"Company {i}",
    )
    for i in range(5)
]
WRONG_KEY = {
    "hubspot/contacts": (
        hubspot,
        "access_token",
        "sandbox-private-app-token",
        lambda state: sorted(c["email"] for c in state.contacts.values()),
    ),
    "hubspot/contacts-batch": (
        hubspot,
        "access_token",
        "sandbox-private-app-token",
        lambda state: sorted(c["email"] for c in state.contacts.values()),
    ),
    "close/leads": (
        close,
        "api_key",
        "sandbox-close-api-key",
        lambda state: sorted(e["email"] for c in state.contacts.values() for e in c["emails"]),
    ),
}


@pytest.mark.parametrize("preset", sorted(WRONG_KEY))
def test_a_wrong_key_dead_letters_and_a_replay_after_the_fix_delivers_each_lead_once(
    preset: str, tmp_path: Path
) -> None:
    module, setting, right, emails = WRONG_KEY[preset]
    with _SandboxThread(module, **{setting: right}) as sandbox:
        settings = tmp_path / "settings.yaml"
        settings.write_text(f"{setting}: wrong-{right}\nbase_url: {sandbox.base}\n", encoding="utf-8")
        events = tmp_path / "events.ndjson"
        events.write_text("".join(json.dumps(e) + "\n" for e in LEADS), encoding="utf-8")
        state = tmp_path / "state"

        run = _cli("run", preset, "--settings", settings, "--events", events, "--state", state)
        outcomes = [json.loads(line) for line in run.stdout.splitlines()]
        assert run.returncode == 1, run.stderr
        assert [(o["outcome"], o["cause"]) for o in outcomes] == [(oc.DEAD_LETTERED, oc.AUTH_REJECTED)] * len(LEADS)
        assert all(f"{setting} setting" in o["detail"] and "dlq replay" in o["detail"] for o in outcomes)
        assert sandbox.read(emails) == []
        assert f"wrong-{right}" not in run.stdout + run.stderr

        settings.write_text(f"{setting}: {right}\nbase_url: {sandbox.base}\n", encoding="utf-8")
        replay = _cli("dlq", "replay", preset, "--settings", settings, "--state", state)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert [o["outcome"] for o in map(json.loads, replay.stdout.splitlines())] == [oc.DELIVERED] * len(LEADS)
        assert "0 left in the dead-letter store" in replay.stderr
        assert sandbox.read(emails) == sorted(e["traits"]["email"] for e in LEADS)
        if preset.endswith("-batch"):  # the letters were batched again: fewer requests than letters
            batches = sandbox.read(lambda state: [list(ids) for ids in state.batches])
            assert sum(map(len, batches)) == len(LEADS) and len(batches) < len(LEADS), batches

        again = _cli("dlq", "replay", preset, "--settings", settings, "--state", state)
        assert again.returncode == 0 and again.stdout == ""
        assert sandbox.read(emails) == sorted(e["traits"]["email"] for e in LEADS)  # each lead once


def test_hubspot_batch_delivers_the_example_leads_in_fewer_requests_each_contact_once(tmp_path: Path) -> None:
    """The example stream, plus a repeat of one lead, through the CLI into the fake's batch upsert."""
    repeat = lead(
        "Demo Requested",
        "repeat-1",
        email=" Marcus.Lee@Northwind.io",
        firstName="Marcus",
        lastName="Lee",
        title="Chief Revenue Officer",
    )
    events = tmp_path / "events.ndjson"
    events.write_text(
        (REPO / "examples/lead-capture.ndjson").read_text(encoding="utf-8") + json.dumps(repeat) + "\n",
        encoding="utf-8",
    )
    with _SandboxThread(hubspot) as sandbox:
        settings = tmp_path / "settings.yaml"
        settings.write_text(f"access_token: sandbox-private-app-token\nbase_url: {sandbox.base}\n", encoding="utf-8")
        run = _cli(
            "run", "hubspot/contacts-batch", "--settings", settings, "--events", events, "--state", tmp_path / "state"
        )
        assert run.returncode == 0, run.stderr
        outcomes = [json.loads(line) for line in run.stdout.splitlines()]
        delivered = [o for o in outcomes if o["outcome"] == oc.DELIVERED]
        assert len(delivered) == 6 and all("delivered in a request of" in o["detail"] for o in delivered)
        batches = sandbox.read(lambda state: [list(ids) for ids in state.batches])
        contacts = sandbox.read(lambda state: {c["email"]: dict(c) for c in state.contacts.values()})
        requests = sandbox.read(lambda state: [(r["method"], r["path"]) for r in state.requests])
    assert len(batches) < 6 and max(map(len, batches)) > 1, batches  # fewer requests than leads
    assert set(requests) == {("POST", "/crm/v3/objects/contacts/batch/upsert")}
    assert all(len(ids) == len(set(ids)) for ids in batches)  # one email once per request
    assert sorted(contacts) == [
        "amara.okafor@umbrella.ng",
        "jane.doe@acme.com",
        "marcus.lee@northwind.io",
        "priya.shah@globex.com",
        "tomas.novak@initech.cz",
    ]  # each contact once
    marcus = contacts["marcus.lee@northwind.io"]
    assert (marcus["jobtitle"], marcus["city"]) == ("Chief Revenue Officer", "London")  # the repeat merged into it
    assert "sandbox-private-app-token" not in run.stdout + run.stderr


def test_hubspot_batch_one_invalid_item_fails_alone_and_the_others_are_delivered() -> None:
    """HubSpot's 207: the refused input's event alone fails; its neighbours in the request are delivered."""
    people = [
        lead("Signed Up", f"mixed-{i}", email=email, firstName="Ann", lastName="Lee")
        for i, email in enumerate(["ann@one.test", "ann..lee@two.test", "ann@three.test"])
    ]

    async def scenario() -> None:
        async def one_request() -> AsyncIterator[list[tuple[int, Any]]]:
            yield list(enumerate(people))  # handed over together, as a run reads its input

        async with delivering(hubspot, "hubspot/contacts-batch", HUBSPOT) as (state, engine, _):
            outcomes = [o async for o in engine.process_batches(one_request())]
            assert [o.outcome for o in outcomes] == [oc.DELIVERED, oc.FAILED, oc.DELIVERED]
            assert outcomes[1].cause == "item_failed"
            assert outcomes[1].detail.startswith("item 1 of a request of 3: VALIDATION_ERROR: ")
            assert "INVALID_EMAIL" in outcomes[1].detail
            assert outcomes[1].response["status"] == 207
            assert state.batches == [["ann@one.test", "ann..lee@two.test", "ann@three.test"]]  # sent once, not again
            assert sorted(c["email"] for c in state.contacts.values()) == ["ann@one.test", "ann@three.test"]

    asyncio.run(scenario())


def test_hubspot_batch_spent_daily_budget_waits_for_midnight_instead_of_collecting_429s() -> None:
    """Daily-Remaining 0 is the daily window spent: the next request waits for the day's end (UTC midnight)."""
    twice = [
        lead("Form Submitted", f"daily-{i}", email="ann@daily.test", firstName="Ann", title=title)
        for i, title in enumerate(["CTO", "CEO"])
    ]  # one email: two requests, one after the other

    async def scenario() -> None:
        async with delivering(hubspot, "hubspot/contacts-batch", HUBSPOT, daily_quota=1) as (state, engine, fake):
            to_midnight = 86400 - time.time() % 86400
            outcomes = await deliver(engine, twice)
            assert [o.outcome for o in outcomes] == [oc.DELIVERED, oc.DELIVERED]
            assert state.statuses == [200, 200]  # no 429 DAILY: the budget was read from the headers
            assert max(fake.sleeps) >= to_midnight - 5  # waited out the day, not a 10 s burst interval
            assert [c["jobtitle"] for c in state.contacts.values()] == ["CEO"]

    asyncio.run(scenario())


# --------------------------------------------------------------------------
# the "done when": dry runs of the example stream
# --------------------------------------------------------------------------


def _dry_run(preset: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", preset, "--events", "examples/lead-capture.ndjson", "--dry-run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize(
    "preset, method, url, auth",
    [
        ("hubspot/contacts", "POST", "https://api.hubapi.com/crm/v3/objects/contacts", "Bearer ***"),
        ("salesloft/people", "POST", "https://api.salesloft.com/v2/people", "Bearer ***"),
        ("close/leads", "POST", "https://api.close.com/api/v1/lead/", "Basic ***"),
    ],
)
def test_dry_run_of_the_example_stream_takes_the_same_leads_as_outreach(
    preset: str, method: str, url: str, auth: str
) -> None:
    outreach = _dry_run("outreach/lead-capture")
    ours = _dry_run(preset)
    # Same identity, consent gate and event table: the same events are sent and dropped, for the same reasons.
    assert [(o["outcome"], o.get("reason")) for o in ours] == [(o["outcome"], o.get("reason")) for o in outreach]
    sent = [o for o in ours if o["outcome"] == oc.WOULD_SEND]
    assert sent
    for outcome in sent:
        request = outcome["request"]
        assert (request["method"], request["url"]) == (method, url)
        assert request["headers"]["Authorization"] == auth
        assert request["headers"]["Content-Type"] == "application/json"


def test_close_lookup_first_dead_letter_is_replayed_with_its_traits_and_delivered() -> None:
    """The search body reads ``traits.email``: a replay must send the same lookup as the first try.

    The person is known to Close; their second event meets five 503s (every
    attempt) and is dead-lettered. Replayed once Close is back, it finds the
    contact by email and updates it: one lead, no second one.
    """

    async def scenario() -> None:
        async with delivering(close, "close/leads", CLOSE) as (state, engine, _):
            (first,) = await deliver(engine, SAME_LEAD_TWICE[:1])
            assert first.outcome == oc.DELIVERED, text_of([first])
            state.faults.extend(parse_fault(503) for _ in range(5))
            (second,) = await deliver(engine, SAME_LEAD_TWICE[1:])
            assert (second.outcome, second.cause) == (oc.DEAD_LETTERED, "http_503"), text_of([second])
            (letter,) = engine.dead_letters.entries("close/leads")
            assert letter["context"]["traits"]["email"] == "marcus.lee@northwind.io"
            assert "sandbox-api-key" not in json.dumps(letter)
            (replayed,) = await engine.replay_dead_letters()
            assert replayed.outcome == oc.DELIVERED, text_of([replayed])
            assert replayed.detail == "updated the existing record found by the lookup (id cont_sandbox0001)"
            assert engine.dead_letters.entries("close/leads") == []
        searches = [r for r in state.requests if r["path"] == "/api/v1/data/search/" and r["status"] == 200]
        assert len(searches) == 2
        assert [(r["method"], r["path"], r["status"]) for r in state.requests[-2:]] == [
            ("POST", "/api/v1/data/search/", 200),
            ("PUT", "/api/v1/contact/cont_sandbox0001/", 200),
        ]
        assert (len(state.leads), state.creates, state.updates) == (1, 1, 1)
        (contact,) = state.contacts.values()
        assert contact["title"] == "VP Sales"

    asyncio.run(scenario())


def test_close_dry_run_shows_the_lookup_that_is_sent_first() -> None:
    """``requests`` lists what a lookup_first delivery sends, in order; ``request`` stays the create."""
    from engine.compile.compiler import load_preset
    from engine.pipeline.prepare import Pipeline

    outcome = Pipeline(load_preset("close/leads"), CLOSE).dry_run(SAME_LEAD_TWICE[1], 0)
    assert outcome.outcome == oc.WOULD_SEND
    lookup, create = outcome.requests
    assert (lookup["method"], lookup["url"]) == ("POST", "https://api.close.com/api/v1/data/search/")
    assert lookup["headers"]["Authorization"] == "Basic ***"
    assert "marcus.lee@northwind.io" in json.dumps(lookup["body"])
    assert create == outcome.request and create["url"] == "https://api.close.com/api/v1/lead/"
    assert list(outcome.to_dict()) == ["index", "messageId", "outcome", "request", "requests"]


# --------------------------------------------------------------------------
# every built-in preset with an upsert: a repeat lead dead-lettered, then
# replayed through the real command line, merges into the one record
# --------------------------------------------------------------------------


def _records(*holders: str) -> Any:
    """The sandbox's person records: each of ``holders`` is a dict attribute of its state."""
    return lambda state: [json.dumps(record) for name in holders for record in getattr(state, name).values()]


# preset: (its sandbox, its credentials, the settings naming the sandbox's URL, the records that hold a person)
UPSERTING = {
    "outreach/lead-capture": (outreach, SALESLOFT, ["base_url"], _records("prospects")),
    "hubspot/contacts": (hubspot, HUBSPOT, ["base_url"], _records("contacts")),
    "salesloft/people": (salesloft, SALESLOFT, ["base_url", "accounts_url"], _records("people")),
    "close/leads": (close, CLOSE, ["base_url"], _records("contacts")),
}


def test_every_built_in_preset_with_an_upsert_is_in_the_replay_test() -> None:
    """A built-in preset added with an upsert or lookup must be replayed below too."""
    from engine.compile import load_preset

    built_in = {f"{p.parent.name}/{p.stem}" for p in (REPO / "presets").glob("*/*.yaml")}
    upserting = {name for name in built_in if any(a.upsert is not None for a in load_preset(name).actions.values())}
    assert upserting <= set(UPSERTING), sorted(upserting - set(UPSERTING))


@pytest.mark.parametrize("preset", sorted(UPSERTING))
def test_a_dead_lettered_repeat_lead_is_replayed_by_the_cli_as_an_update_of_the_one_record(
    preset: str, tmp_path: Path
) -> None:
    """The person is known; their repeat meets a fault on every attempt and is dead-lettered.

    ``dlq replay`` (the real command, on the same state) sends the letter's
    lookup, key and update as the first try would have: the destination then
    holds the person once, with the repeat's data (the title), not twice.
    """
    from engine.compile import load_preset

    module, credentials, urls, records = UPSERTING[preset]
    attempts = load_preset(preset).delivery.retries.max_attempts
    email = MARCUS["email"]

    async def no_sleep(_: float) -> None:
        return None

    with _SandboxThread(module) as sandbox:
        settings = {**credentials, **dict.fromkeys(urls, sandbox.base)}
        state = tmp_path / "state"

        async def first_try() -> list[Any]:
            async with Engine.from_preset(preset, settings, state=state, sleep=no_sleep) as engine:
                (created,) = await deliver(engine, SAME_LEAD_TWICE[:1])
                sandbox.read(lambda s: s.faults.extend(parse_fault(503) for _ in range(attempts)))
                (repeat,) = await deliver(engine, SAME_LEAD_TWICE[1:])
                return [created, repeat]

        created, repeat = asyncio.run(first_try())
        assert created.outcome == oc.DELIVERED, text_of([created])
        assert (repeat.outcome, repeat.cause) == (oc.DEAD_LETTERED, "http_503"), text_of([repeat])
        before = [r for r in sandbox.read(records) if email in r.lower()]
        assert len(before) == 1 and "VP Sales" not in before[0]

        settings_file = tmp_path / "settings.yaml"
        settings_file.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()), encoding="utf-8")
        replay = _cli("dlq", "replay", preset, "--settings", settings_file, "--state", state)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        (replayed,) = map(json.loads, replay.stdout.splitlines())
        assert replayed["outcome"] == oc.DELIVERED, replayed
        assert replayed["messageId"] == "twice-2"
        assert "0 left in the dead-letter store" in replay.stderr
        after = [r for r in sandbox.read(records) if email in r.lower()]
        assert len(after) == 1, after  # merged into the one record, not a second one
        assert "VP Sales" in after[0]
        assert sandbox.read(lambda s: (s.creates, s.updates)) == (1, 1)
