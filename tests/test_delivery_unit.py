"""Delivery against a mocked Outreach: every status path, auth, rate limits, dead letters, secrets.

Everything runs on a fake clock: ``FakeTime.sleep`` records each requested
delay and moves the clock forward instead of waiting, and the engine's rate
limiter is rebuilt on that clock (the engine takes an injectable ``sleep``
but its limiter otherwise reads the real monotonic clock).
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import logging
import random
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import aiohttp
import aioresponses.core as aioresponses_core
import pytest
from aiohttp import ClientResponse
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.delivery.rate_limit import RateLimiter
from engine.runtime import Engine
from engine.state.dead_letters import MemoryDeadLetters
from engine.state.sqlite import SqliteState
from engine.state.token_store import MemoryTokenStore
from fakes import FakeTime

PRESET = "outreach/lead-capture"
BASE = "https://api.outreach.test"
TOKEN_URL = f"{BASE}/oauth/token"
PROSPECTS_URL = f"{BASE}/api/v2/prospects"
LOOKUP_RE = re.compile(r"^https://api\.outreach\.test/api/v2/prospects\?")
JSONAPI = "application/vnd.api+json"

CLIENT_SECRET = "s3cr3t-client"
REFRESH = "rt-initial-123456"
ROTATED = "rt-rotated-654321"
ROTATED_2 = "rt-rotated-2-777888"
REAUTHORISED = "rt-reauthorised-999000"
ACCESS = "at-first-0001xyz"
ACCESS_2 = "at-second-0002xyz"
SECRETS = (CLIENT_SECRET, REFRESH, ROTATED, ROTATED_2, REAUTHORISED, ACCESS, ACCESS_2)

SETTINGS = {"client_id": "cid", "client_secret": CLIENT_SECRET, "refresh_token": REFRESH, "base_url": BASE}

DOCUMENT = {
    "data": {
        "type": "prospect",
        "attributes": {
            "emails": ["jane@acme.com"],
            "firstName": "Jane",
            "name": "Jane",
            "tags": ["Signal", "demo-request"],
        },
    }
}

# The product page's Troubleshooting table (the preset's messages must carry it).
SEED_403 = (
    "The connected app lacks the prospects.write scope. Re-authorise with both prospects.read and prospects.write."
)
SEED_415 = (
    "The Content-Type: application/vnd.api+json header is missing. Signal sets this automatically; "
    "if you see it, check for a proxy stripping the header."
)

DUPLICATE_422 = {
    "errors": [
        {"id": "validationError", "title": "Validation Error", "detail": "Contacts email hash has already been taken."}
    ]
}

_SPEC = load_preset(PRESET)


def _delivery_message(status: int) -> str:
    rule = next(r for r in _SPEC.delivery.rules if status in r.statuses)
    assert rule.message
    return rule.message


def _auth_message(then: str, error: str | None = None) -> str:
    rule = next(r for r in _SPEC.auth.rules if r.then == then and (error is None or error in r.errors))
    assert rule.message
    return rule.message


MSG_401 = _delivery_message(401)
MSG_422 = next(r.message for r in _SPEC.delivery.rules if 422 in r.statuses and r.then == "fail")
MSG_INVALID_GRANT = _auth_message("reauthorise", "invalid_grant")


def lead(i: int | None = None, email: str = "Jane@Acme.com") -> dict[str, Any]:
    suffix = "" if i is None else str(i)
    if i is not None:
        email = f"lead{i}@acme.com"
    return {
        "type": "track",
        "event": "Demo Requested",
        "userId": f"u1{suffix}",
        "messageId": f"m1{suffix}",
        "traits": {"email": email, "firstName": "Jane"},
        "context": {"consent": {"canonical": {"marketing": True}}},
    }


# --------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------


class MaxRandom(random.Random):
    """Full jitter pinned to its ceiling, so backoff delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    data: Any

    @property
    def kind(self) -> str:
        path = URL(self.url).path
        if path == "/oauth/token":
            return "token"
        if self.method == "POST":
            return "create"
        if self.method == "GET":
            return "lookup"
        if self.method == "PATCH":
            return "patch"
        return f"{self.method} {path}"

    @property
    def json(self) -> Any:
        return json.loads(self.data) if isinstance(self.data, (bytes, str)) and self.data else None

    @property
    def query(self) -> dict[str, str]:
        return dict(URL(self.url).query)


class Wire:
    """aioresponses plus an ordered log of every request the engine sent."""

    def __init__(self, m: aioresponses) -> None:
        self.m = m
        self.sent: list[Sent] = []

    def add(
        self,
        method: str,
        url: Any,
        *,
        status: int = 200,
        payload: Any = None,
        headers: dict | None = None,
        exception: BaseException | None = None,
        repeat: bool | int = False,
        callback: Callable[..., Any] | None = None,
    ) -> None:
        async def record(u: URL, **kwargs: Any) -> Any:
            self.sent.append(Sent(method, str(u), dict(kwargs.get("headers") or {}), kwargs.get("data")))
            if callback is None:
                return None
            result = callback(u, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        self.m.add(
            url,
            method,
            status=status,
            payload=payload,
            headers=headers,
            exception=exception,
            repeat=repeat,
            callback=record,
        )

    def token(
        self,
        access: str = ACCESS,
        refresh: str | None = None,
        *,
        expires_in: int = 7200,
        status: int = 200,
        payload: Any = None,
        **kw: Any,
    ) -> None:
        if payload is None and status == 200:
            payload = {
                "access_token": access,
                "token_type": "bearer",
                "expires_in": expires_in,
                "scope": "prospects.read prospects.write",
                "created_at": int(time.time()),
            }
            if refresh:
                payload["refresh_token"] = refresh
        self.add("POST", TOKEN_URL, status=status, payload=payload, **kw)

    def create(self, status: int = 201, payload: Any = None, **kw: Any) -> None:
        if payload is None and status == 201:
            payload = {"data": {"type": "prospect", "id": 7, "attributes": DOCUMENT["data"]["attributes"]}}
        self.add("POST", PROSPECTS_URL, status=status, payload=payload, **kw)

    def lookup(self, payload: Any, **kw: Any) -> None:
        self.add("GET", LOOKUP_RE, payload=payload, **kw)

    def patch(self, prospect_id: int, status: int = 200, payload: Any = None, **kw: Any) -> None:
        payload = payload if payload is not None else {"data": {"type": "prospect", "id": prospect_id}}
        self.add("PATCH", f"{PROSPECTS_URL}/{prospect_id}", status=status, payload=payload, **kw)

    def kinds(self) -> list[str]:
        return [s.kind for s in self.sent]

    def of(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]

    def count(self, method: str, url: str) -> int:
        """The same count as seen by aioresponses' own request registry."""
        return len(self.m.requests.get((method, URL(url)), []))


if "stream_writer" in inspect.signature(ClientResponse.__init__).parameters:

    class _CompatResponse(ClientResponse):
        """aioresponses 0.7.9 builds responses without the ``stream_writer`` aiohttp >= 3.12 requires."""

        def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
            kwargs.setdefault("stream_writer", Mock(output_size=0))
            super().__init__(method, url, **kwargs)
else:  # pragma: no cover - older aiohttp
    _CompatResponse = ClientResponse  # type: ignore[misc]


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatResponse)
    with aioresponses() as m:
        yield Wire(m)


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime(start=50_000.0)


def make_engine(
    clock: FakeTime,
    *,
    token_store: Any = None,
    dead_letters: Any = None,
    rng: random.Random | None = None,
    concurrency: int | None = None,
    **settings: Any,
) -> Engine:
    engine = Engine.from_preset(
        PRESET,
        {**SETTINGS, **settings},
        token_store=token_store if token_store is not None else MemoryTokenStore(),
        dead_letters=dead_letters if dead_letters is not None else MemoryDeadLetters(),
        sleep=clock.sleep,
        rng=rng,
        concurrency=concurrency,
    )
    rl = engine.preset.delivery.rate_limit
    engine.limiter = RateLimiter(
        rl.requests,
        rl.per_seconds,
        remaining_header=rl.remaining_header,
        reset_header=rl.reset_header,
        clock=clock.monotonic,
        sleep=clock.sleep,
    )
    return engine


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


async def deliver(engine: Engine, *events: dict[str, Any]) -> list[oc.Outcome]:
    async with engine:
        return [await engine.process(e) for e in events]


def assert_api_headers(sent: Sent, access: str, *, with_body: bool = True) -> None:
    assert sent.headers["Authorization"] == f"Bearer {access}"
    assert sent.headers["Accept"] == JSONAPI
    if with_body:
        assert sent.headers["Content-Type"] == JSONAPI
    else:
        assert "Content-Type" not in sent.headers


def assert_token_form(sent: Sent, refresh: str) -> None:
    assert sent.data == {
        "grant_type": "refresh_token",
        "client_id": "cid",
        "client_secret": CLIENT_SECRET,
        "refresh_token": refresh,
    }


def rate_headers(remaining: str = "9999, 19988", reset_in: int = 3600) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": "10000",
        "X-RateLimit-Remaining": remaining,
        "X-RateLimit-Reset": str(int(time.time()) + reset_in),
    }


def no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked"


# --------------------------------------------------------------------------
# 2xx
# --------------------------------------------------------------------------


def test_201_delivers_with_one_mint_and_masks_the_credential(wire: Wire, clock: FakeTime) -> None:
    wire.token(ACCESS)
    wire.create(201, headers=rate_headers())
    engine = make_engine(clock)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.cause is None
    assert result.attempts == 1
    assert result.response["status"] == 201
    assert result.response["body"]["data"]["id"] == 7
    assert wire.kinds() == ["token", "create"]
    assert wire.count("POST", TOKEN_URL) == 1 and wire.count("POST", PROSPECTS_URL) == 1
    assert engine.mints == 1
    token, create = wire.sent
    assert_token_form(token, REFRESH)
    assert_api_headers(create, ACCESS)
    assert create.json == DOCUMENT
    assert result.request == {
        "method": "POST",
        "url": PROSPECTS_URL,
        "headers": {"Content-Type": JSONAPI, "Accept": JSONAPI, "Authorization": "Bearer ***"},
        "body": DOCUMENT,
    }
    assert clock.sleeps == []


def test_cached_access_token_serves_later_events_without_minting(wire: Wire, clock: FakeTime) -> None:
    wire.token(ACCESS)
    wire.create(201, repeat=3)
    engine = make_engine(clock)

    results = run(deliver(engine, lead(1), lead(2), lead(3)))

    assert [r.outcome for r in results] == [oc.DELIVERED] * 3
    assert wire.kinds() == ["token", "create", "create", "create"]
    assert engine.mints == 1
    for sent in wire.of("create"):
        assert_api_headers(sent, ACCESS)


# --------------------------------------------------------------------------
# 401
# --------------------------------------------------------------------------


def test_401_refreshes_once_then_delivers(wire: Wire, clock: FakeTime) -> None:
    wire.token(ACCESS, ROTATED)
    wire.create(401, payload={"error": "Invalid JWT token."})
    wire.token(ACCESS_2, ROTATED_2)
    wire.create(201)
    engine = make_engine(clock)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.attempts == 2
    assert result.response["status"] == 201
    assert wire.kinds() == ["token", "create", "token", "create"]
    assert engine.mints == 2
    first_mint, first, second_mint, second = wire.sent
    assert_token_form(first_mint, REFRESH)
    assert_token_form(second_mint, ROTATED)  # the rotated token, never the spent one
    assert_api_headers(first, ACCESS)
    assert_api_headers(second, ACCESS_2)
    assert first.json == second.json == DOCUMENT
    assert clock.sleeps == []


def test_second_401_after_refresh_is_dead_lettered_without_looping(wire: Wire, clock: FakeTime) -> None:
    """A 401 that outlives one refresh waits for a person (new credentials) in the dead letters."""
    wire.token(ACCESS)
    wire.create(401, payload={"error": "Invalid JWT token."}, repeat=2)
    wire.token(ACCESS_2)
    wire.token("at-third-never-used", repeat=True)
    wire.create(201, repeat=True)  # would be taken by a loop
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DEAD_LETTERED
    assert result.cause == "http_401"
    assert result.detail.endswith(MSG_401)
    assert "401 Unauthorized" in result.detail
    assert result.attempts == 2
    assert result.response["status"] == 401
    assert wire.kinds() == ["token", "create", "token", "create"]
    assert engine.mints == 2
    assert_api_headers(wire.sent[1], ACCESS)
    assert_api_headers(wire.sent[3], ACCESS_2)
    [letter] = dead.entries()
    assert letter["cause"] == "http_401"


# --------------------------------------------------------------------------
# 403 / 415: final
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, body, seed, title",
    [
        (
            403,
            {"errors": [{"id": "unauthorizedOauthScope", "title": "Unauthorized OAuth Scope"}]},
            SEED_403,
            "403 Forbidden",
        ),
        (
            415,
            {"errors": [{"id": "unsupportedMediaType", "details": "Expected application/vnd.api+json"}]},
            SEED_415,
            "415 Unsupported Media Type",
        ),
    ],
)
def test_403_and_415_fail_with_the_troubleshooting_text_and_are_not_retried(
    wire: Wire, clock: FakeTime, status: int, body: dict, seed: str, title: str
) -> None:
    wire.token(ACCESS)
    wire.create(status, payload=body)
    wire.create(201, repeat=True)  # a retry would deliver
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.FAILED
    assert result.cause == f"http_{status}"
    assert result.detail.startswith(title)
    assert seed.lower() in result.detail.lower()
    assert result.attempts == 1
    assert result.response == {"status": status, "body": body}
    assert wire.kinds() == ["token", "create"]
    assert_api_headers(wire.sent[1], ACCESS)
    assert engine.mints == 1
    assert clock.sleeps == []
    assert dead.entries() == []


# --------------------------------------------------------------------------
# 422
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "existing_emails, existing_tags, want_emails, want_tags",
    [
        (
            ["jane@acme.com", "jane.doe@acme.com"],
            ["VIP", "Signal"],
            ["jane@acme.com", "jane.doe@acme.com"],
            ["VIP", "Signal", "demo-request"],
        ),
        (["jane@acme.com"], ["Signal", "demo-request"], ["jane@acme.com"], ["Signal", "demo-request"]),
        (["old@acme.com"], [], ["old@acme.com", "jane@acme.com"], ["Signal", "demo-request"]),
    ],
)
def test_422_duplicate_email_is_looked_up_and_patched_with_merged_arrays(
    wire: Wire, clock: FakeTime, existing_emails: list, existing_tags: list, want_emails: list, want_tags: list
) -> None:
    wire.token(ACCESS)
    wire.create(422, payload=DUPLICATE_422)
    wire.lookup(
        {
            "data": [
                {
                    "type": "prospect",
                    "id": 4242,
                    "attributes": {"emails": existing_emails, "tags": existing_tags, "firstName": "J", "title": "CTO"},
                }
            ]
        }
    )
    wire.patch(4242, 200)
    engine = make_engine(clock)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.cause is None
    assert result.attempts == 3
    assert result.response["status"] == 200
    assert "4242" in result.detail
    assert wire.kinds() == ["token", "create", "lookup", "patch"]
    _, create, lookup, patch = wire.sent
    assert_api_headers(create, ACCESS)
    assert_api_headers(lookup, ACCESS, with_body=False)
    assert lookup.data is None
    assert lookup.query == {"filter[emails]": "jane@acme.com", "page[size]": "1"}
    assert_api_headers(patch, ACCESS)
    assert patch.url == f"{PROSPECTS_URL}/4242"
    body = patch.json
    assert body["data"]["type"] == "prospect"
    assert body["data"]["id"] == 4242
    attributes = body["data"]["attributes"]
    assert attributes["tags"] == want_tags
    assert attributes["emails"] == want_emails
    assert attributes["firstName"] == "Jane"  # the new value wins for scalars
    assert "title" not in attributes  # attributes the event does not carry are left alone
    assert result.request["method"] == "PATCH"
    assert result.request["headers"]["Authorization"] == "Bearer ***"
    assert engine.mints == 1


def test_422_validation_error_fails_without_upsert(wire: Wire, clock: FakeTime) -> None:
    body = {
        "errors": [
            {
                "id": "validationError",
                "title": "Validation Error",
                "detail": "favoriteColour is not a valid attribute",
                "source": {"pointer": "/data/attributes/favoriteColour"},
            }
        ]
    }
    wire.token(ACCESS)
    wire.create(422, payload=body)
    wire.lookup({"data": [{"type": "prospect", "id": 1, "attributes": {}}]}, repeat=True)
    wire.create(201, repeat=True)
    engine = make_engine(clock)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.FAILED
    assert result.cause == "http_422"
    assert result.detail == MSG_422
    assert result.attempts == 1
    assert result.response == {"status": 422, "body": body}
    assert wire.kinds() == ["token", "create"]


def test_422_duplicate_but_lookup_finds_nothing_is_kept_for_replay_and_does_not_patch(
    wire: Wire, clock: FakeTime
) -> None:
    # Search can lag behind the create; a final failure could never be replayed.
    wire.token(ACCESS)
    wire.create(422, payload=DUPLICATE_422)
    wire.lookup({"data": []})
    engine = make_engine(clock)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DEAD_LETTERED
    assert result.cause == "upsert_not_found"
    assert result.attempts == 2
    assert wire.kinds() == ["token", "create", "lookup"]


# --------------------------------------------------------------------------
# 429
# --------------------------------------------------------------------------


def _http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


@pytest.mark.parametrize(
    "headers_for, expected",
    [
        (
            lambda now: {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(now + 30)},
            30.0,
        ),  # the reset, no extra second
        (lambda now: {"X-RateLimit-Reset": str(now + 45)}, 45.0),
        (lambda now: {"Retry-After": "12"}, 12.0),
        (lambda now: {"Retry-After": str(now + 20)}, 20.0),
        (lambda now: {"Retry-After": _http_date(now + 15)}, 15.0),
        (lambda now: {"Retry-After": "25", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(now + 25)}, 25.0),
    ],
    ids=["reset+remaining", "reset", "retry-after-seconds", "retry-after-epoch", "retry-after-http-date", "both"],
)
def test_429_waits_for_the_reset_then_retries(
    wire: Wire, clock: FakeTime, headers_for: Callable[[int], dict], expected: float
) -> None:
    now = int(time.time())
    wire.token(ACCESS)
    wire.create(429, payload={"errors": [{"id": "rateLimitExceeded"}]}, headers=headers_for(now))
    wire.create(201)
    engine = make_engine(clock)
    start = clock.now

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.attempts == 2
    assert result.response["status"] == 201
    assert wire.kinds() == ["token", "create", "create"]
    assert_api_headers(wire.sent[2], ACCESS)
    assert clock.sleeps, "a 429 must wait"
    assert expected - 1.5 <= max(clock.sleeps) <= expected + 0.5
    assert expected - 1.5 <= clock.now - start <= expected + 0.5
    assert engine.mints == 1


def test_429_exhausts_after_the_wait_limit(wire: Wire, clock: FakeTime) -> None:
    wire.token(ACCESS)
    wire.create(429, headers={"Retry-After": "5"}, repeat=True)
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DEAD_LETTERED
    assert result.cause == "http_429"
    assert result.attempts == 11
    assert wire.kinds().count("create") == 11
    assert len(dead.entries()) == 1


# --------------------------------------------------------------------------
# 5xx
# --------------------------------------------------------------------------


def test_500_502_503_then_201_delivers_after_growing_backoff(wire: Wire, clock: FakeTime) -> None:
    wire.token(ACCESS)
    for status in (500, 502, 503):
        wire.create(status, payload={"errors": [{"id": "serverError"}]})
    wire.create(201)
    engine = make_engine(clock, rng=MaxRandom())

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.attempts == 4
    assert result.response["status"] == 201
    assert wire.kinds() == ["token", "create", "create", "create", "create"]
    for sent in wire.of("create"):
        assert_api_headers(sent, ACCESS)
        assert sent.json == DOCUMENT
    assert clock.sleeps == pytest.approx([0.5, 1.0, 2.0])
    assert engine.mints == 1


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_5xx_backoff_is_full_jitter_within_the_exponential_ceiling(wire: Wire, clock: FakeTime, seed: int) -> None:
    wire.token(ACCESS)
    wire.create(500, repeat=4)
    wire.create(201)
    engine = make_engine(clock, rng=random.Random(seed))

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.attempts == 5
    assert len(clock.sleeps) == 4
    for i, delay in enumerate(clock.sleeps):
        assert 0.0 <= delay <= 0.5 * 2**i
    assert any(d < 0.5 * 2**i for i, d in enumerate(clock.sleeps))  # jittered, not the bare ceiling


@pytest.mark.parametrize(
    "retry_after, expected",
    [
        ("2", 2.0),
        (None, 100.0),  # ISO timestamp, as Outreach sends for scheduled maintenance
    ],
)
def test_503_retry_after_is_honoured(wire: Wire, clock: FakeTime, retry_after: str | None, expected: float) -> None:
    slack = 0.1
    if retry_after is None:
        # An absolute time is read against the real wall clock, which moves on while a
        # loaded machine runs the test: allow for a few seconds of that, not one.
        retry_after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(time.time()) + 100))
        slack = 5.0
    wire.token(ACCESS)
    wire.create(503, payload={"errors": [{"id": "scheduledServerMaintenance"}]}, headers={"Retry-After": retry_after})
    wire.create(201)
    engine = make_engine(clock, rng=MaxRandom())
    start = clock.now

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.attempts == 2
    assert wire.kinds() == ["token", "create", "create"]
    assert expected - 1.0 - slack <= max(clock.sleeps) <= expected + 0.1
    assert expected - 1.0 - slack <= clock.now - start <= expected + 0.1
    assert 0.5 not in clock.sleeps  # Retry-After replaces the backoff


@pytest.mark.parametrize("dead_store", ["memory", "sqlite"])
def test_5xx_exhausted_is_dead_lettered_masked_and_replayable(
    wire: Wire, clock: FakeTime, tmp_path: Path, dead_store: str
) -> None:
    error_body = {"errors": [{"id": "internalServerError", "title": "Internal Server Error"}]}
    wire.token(ACCESS)
    wire.create(500, payload=error_body, repeat=5)
    dead = MemoryDeadLetters() if dead_store == "memory" else SqliteState(tmp_path / "dlq").dead_letters()
    engine = make_engine(clock, dead_letters=dead, rng=MaxRandom())

    async def scenario() -> tuple[oc.Outcome, list[dict], list[oc.Outcome]]:
        async with engine:
            first = await engine.process(lead())
            letters = dead.entries()
            wire.create(201)
            replayed = await engine.replay_dead_letters()
            return first, letters, replayed

    result, letters, replayed = run(scenario())

    assert result.outcome == oc.DEAD_LETTERED
    assert result.cause == "http_500"
    assert result.attempts == 5
    assert result.response == {"status": 500, "body": error_body}
    assert result.detail.startswith("gave up after 5 attempts")
    assert clock.sleeps == pytest.approx([0.5, 1.0, 2.0, 4.0])
    assert len(letters) == 1
    letter = letters[0]
    assert letter["preset"] == PRESET
    assert letter["action"] == "create_prospect"
    assert letter["messageId"] == "m1"
    assert letter["cause"] == "http_500"
    assert letter["attempts"] == 5
    assert letter["request"] == {
        "method": "POST",
        "url": PROSPECTS_URL,
        "body": DOCUMENT,
        "headers": {"Content-Type": JSONAPI, "Accept": JSONAPI, "Authorization": "Bearer ***"},
    }
    assert letter["last_response"] == {"status": 500, "body": error_body}
    no_secrets(json.dumps(letter))
    if dead_store == "sqlite":
        path = tmp_path / "dlq" / "state.db"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    assert [r.outcome for r in replayed] == [oc.DELIVERED]
    assert replayed[0].response["status"] == 201
    assert dead.entries() == []
    assert wire.kinds() == ["token"] + ["create"] * 6
    replay = wire.sent[-1]
    assert_api_headers(replay, ACCESS)
    assert replay.json == DOCUMENT
    assert engine.mints == 1


def test_replay_keeps_letters_that_still_fail(wire: Wire, clock: FakeTime) -> None:
    wire.token(ACCESS)
    wire.create(500, repeat=10)
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    async def scenario() -> list[oc.Outcome]:
        async with engine:
            await engine.process(lead())
            return await engine.replay_dead_letters()

    replayed = run(scenario())

    assert [r.outcome for r in replayed] == [oc.DEAD_LETTERED]
    [letter] = dead.entries()
    assert letter["attempts"] == 10
    assert letter["cause"] == "http_500"


# --------------------------------------------------------------------------
# transport errors
# --------------------------------------------------------------------------


def test_timeouts_and_connection_errors_are_retried(wire: Wire, clock: FakeTime) -> None:
    wire.token(ACCESS)
    wire.create(exception=aiohttp.ClientConnectionError())
    wire.create(exception=TimeoutError())
    wire.create(exception=aiohttp.ServerDisconnectedError())
    wire.create(201)
    engine = make_engine(clock, rng=MaxRandom())

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.attempts == 4
    assert result.response["status"] == 201
    assert wire.kinds() == ["token", "create", "create", "create", "create"]
    assert clock.sleeps == pytest.approx([0.5, 1.0, 2.0])


@pytest.mark.parametrize(
    "exception, cause",
    [
        (TimeoutError(), "timeout"),
        (aiohttp.ClientConnectionError(), "connection"),
    ],
)
def test_transport_errors_exhausted_are_dead_lettered(
    wire: Wire, clock: FakeTime, exception: BaseException, cause: str
) -> None:
    wire.token(ACCESS)
    for _ in range(5):
        wire.create(exception=exception)
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DEAD_LETTERED
    assert result.cause == cause
    assert result.attempts == 5
    assert result.response["error"] == cause
    assert wire.kinds() == ["token"] + ["create"] * 5
    assert len(dead.entries()) == 1


def test_token_endpoint_unreachable_is_retried(wire: Wire, clock: FakeTime) -> None:
    wire.add("POST", TOKEN_URL, exception=aiohttp.ClientConnectionError())
    wire.token(ACCESS)
    wire.create(201)
    engine = make_engine(clock, rng=MaxRandom())

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert wire.kinds() == ["token", "token", "create"]
    assert clock.sleeps == pytest.approx([0.5])
    assert engine.mints == 1


def test_token_endpoint_5xx_exhausted_dead_letters_as_auth_unavailable(wire: Wire, clock: FakeTime) -> None:
    wire.token(status=503, payload={"error": "unavailable"}, repeat=True)
    wire.create(201, repeat=True)
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DEAD_LETTERED
    assert result.cause == "auth_unavailable"
    assert wire.kinds() == ["token"] * 5
    assert len(dead.entries()) == 1
    assert dead.entries()[0]["request"]["body"] == DOCUMENT


# --------------------------------------------------------------------------
# refresh-token rotation
# --------------------------------------------------------------------------


def stored_tokens(directory: Path) -> Any:
    """The token store of a state directory, as another process would open it."""
    return SqliteState(directory).tokens("cid")


def test_rotated_refresh_token_is_persisted_before_the_api_call(wire: Wire, clock: FakeTime, tmp_path: Path) -> None:
    path = tmp_path / "state"
    seen: dict[str, Any] = {}

    def check_store(url: URL, **kwargs: Any) -> None:
        seen["tokens"] = stored_tokens(path).load(REFRESH)  # read by a second connection, as another process would
        seen["mode"] = stat.S_IMODE((path / "state.db").stat().st_mode)

    wire.token(ACCESS, ROTATED)
    wire.create(201, callback=check_store)
    engine = make_engine(clock, token_store=stored_tokens(path))

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert seen["tokens"].refresh_token == ROTATED
    assert seen["tokens"].access_token == ACCESS
    assert seen["mode"] == 0o600
    assert REFRESH.encode() not in b"".join(
        f.read_bytes() for f in path.glob("state.db*")
    )  # the spent token is not kept

    # A second engine on the same store reuses the live access token: no mint.
    again = make_engine(clock, token_store=stored_tokens(path))
    wire.create(201)
    [second] = run(deliver(again, lead()))
    assert second.outcome == oc.DELIVERED
    assert again.mints == 0
    assert wire.kinds() == ["token", "create", "create"]
    assert_api_headers(wire.sent[-1], ACCESS)


def test_next_engine_mints_with_the_rotated_token_when_the_access_token_is_stale(
    wire: Wire, clock: FakeTime, tmp_path: Path
) -> None:
    path = tmp_path / "state"
    wire.token(ACCESS, ROTATED, expires_in=4)  # within the minimum expiry margin: stale for the next run
    wire.create(201)
    run(deliver(make_engine(clock, token_store=stored_tokens(path)), lead()))

    wire.token(ACCESS_2, ROTATED_2)
    wire.create(201)
    second = make_engine(clock, token_store=stored_tokens(path))
    [result] = run(deliver(second, lead()))

    assert result.outcome == oc.DELIVERED
    assert wire.kinds() == ["token", "create", "token", "create"]
    assert_token_form(wire.sent[2], ROTATED)
    assert_api_headers(wire.sent[3], ACCESS_2)
    assert second.mints == 1
    assert stored_tokens(path).load(REFRESH).refresh_token == ROTATED_2


def test_new_refresh_token_in_settings_wins_over_the_stored_chain(wire: Wire, clock: FakeTime, tmp_path: Path) -> None:
    path = tmp_path / "state"
    wire.token(ACCESS, ROTATED)
    wire.create(201)
    run(deliver(make_engine(clock, token_store=stored_tokens(path)), lead()))

    wire.token(ACCESS_2, ROTATED_2)
    wire.create(201)
    reauthorised = make_engine(clock, token_store=stored_tokens(path), refresh_token=REAUTHORISED)
    [result] = run(deliver(reauthorised, lead()))

    assert result.outcome == oc.DELIVERED
    assert wire.kinds() == ["token", "create", "token", "create"]
    assert_token_form(wire.sent[2], REAUTHORISED)  # neither the stored chain nor its access token
    assert_api_headers(wire.sent[3], ACCESS_2)
    assert reauthorised.mints == 1
    assert stored_tokens(path).load(REAUTHORISED).refresh_token == ROTATED_2  # the new chain is the one kept


# --------------------------------------------------------------------------
# invalid_grant and token-endpoint throttling
# --------------------------------------------------------------------------


def test_invalid_grant_stops_minting_and_dead_letters_every_event(wire: Wire, clock: FakeTime) -> None:
    wire.token(
        status=400,
        payload={"error": "invalid_grant", "error_description": "The provided authorization grant is invalid"},
    )
    wire.token(ACCESS, repeat=True)  # a retry of the token endpoint would find this
    wire.create(201, repeat=True)
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    first, second = run(deliver(engine, lead(1), lead(2)))

    for result in (first, second):
        assert result.outcome == oc.DEAD_LETTERED
        assert result.cause == "reauthorisation_required"
        assert result.detail == MSG_INVALID_GRANT
        assert "Re-authorise the app" in result.detail
        assert result.attempts == 0
    assert wire.kinds() == ["token"]
    assert clock.sleeps == []
    letters = dead.entries()
    assert [e["messageId"] for e in letters] == ["m11", "m12"]
    assert all(e["cause"] == "reauthorisation_required" for e in letters)
    assert letters[0]["request"]["body"]["data"]["attributes"]["emails"] == ["lead1@acme.com"]
    assert letters[0]["request"]["headers"]["Authorization"] == "Bearer ***"
    no_secrets(json.dumps(letters))

    # After re-authorising, the waiting events are replayed, not lost (the
    # repeating token and create answers registered above serve the replay).
    fixed = make_engine(clock, dead_letters=dead, refresh_token=REAUTHORISED)

    async def replay() -> list[oc.Outcome]:
        async with fixed:
            return await fixed.replay_dead_letters()

    replayed = run(replay())
    assert [r.outcome for r in replayed] == [oc.DELIVERED, oc.DELIVERED]
    assert dead.entries() == []
    assert_token_form(wire.sent[1], REAUTHORISED)
    sent_emails = sorted(s.json["data"]["attributes"]["emails"][0] for s in wire.of("create"))
    assert sent_emails == ["lead1@acme.com", "lead2@acme.com"]


# Without Retry-After the wait backs off exponentially from about a second (not a flat minute).
@pytest.mark.parametrize("headers, expected", [({"Retry-After": "7"}, 7.0), (None, 1.0)])
def test_token_endpoint_429_waits_then_mints_again(
    wire: Wire, clock: FakeTime, headers: dict | None, expected: float
) -> None:
    wire.token(status=429, payload={"errors": [{"id": "rateLimitExceeded"}]}, headers=headers)
    wire.token(ACCESS)
    wire.create(201)
    engine = make_engine(clock)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert result.attempts == 1
    assert wire.kinds() == ["token", "token", "create"]
    assert clock.sleeps == pytest.approx([expected], abs=0.01)
    assert engine.mints == 1
    assert_api_headers(wire.sent[2], ACCESS)


# --------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------


def test_twenty_concurrent_events_mint_exactly_one_token(wire: Wire, clock: FakeTime) -> None:
    async def slow_mint(url: URL, **kwargs: Any) -> None:
        for _ in range(5):
            await asyncio.sleep(0)  # let every other event reach the token cache

    wire.token(ACCESS, callback=slow_mint, repeat=True)
    wire.create(201, repeat=True)
    engine = make_engine(clock)

    async def scenario() -> list[oc.Outcome]:
        async with engine:
            return await asyncio.gather(*(engine.process(lead(i)) for i in range(20)))

    results = run(scenario())

    assert [r.outcome for r in results] == [oc.DELIVERED] * 20
    assert engine.mints == 1
    assert wire.count("POST", TOKEN_URL) == 1
    assert wire.count("POST", PROSPECTS_URL) == 20
    for sent in wire.of("create"):
        assert_api_headers(sent, ACCESS)


def _email_index(kwargs: dict[str, Any]) -> int:
    email_ = json.loads(kwargs["data"])["data"]["attributes"]["emails"][0]
    return int(email_.removeprefix("lead").split("@")[0])


def test_process_many_returns_outcomes_in_input_order_when_later_events_finish_first(
    wire: Wire, clock: FakeTime
) -> None:
    n = 5
    answered: dict[int, asyncio.Event] = {}
    finished: list[int] = []

    async def reverse_order(url: URL, **kwargs: Any) -> CallbackResult:
        i = _email_index(kwargs)
        answered.setdefault(i, asyncio.Event())
        if i + 1 < n:
            await answered.setdefault(i + 1, asyncio.Event()).wait()
        finished.append(i)
        answered[i].set()
        return CallbackResult(
            status=201, payload={"data": {"type": "prospect", "id": 100 + i}}, response_class=_CompatResponse
        )

    wire.token(ACCESS)
    wire.create(201, callback=reverse_order, repeat=True)
    engine = make_engine(clock)
    page = {"type": "page", "anonymousId": "a1", "messageId": "p1"}
    events = [lead(0), lead(1), page, lead(2), lead(3), lead(4)]

    async def scenario() -> list[oc.Outcome]:
        async with engine:
            return [o async for o in engine.process_many(events)]

    results = run(scenario())

    assert finished == [4, 3, 2, 1, 0]
    assert [r.index for r in results] == [0, 1, 2, 3, 4, 5]
    assert [r.outcome for r in results] == [oc.DELIVERED, oc.DELIVERED, oc.DROPPED] + [oc.DELIVERED] * 3
    assert [r.message_id for r in results] == ["m10", "m11", "p1", "m12", "m13", "m14"]
    ids = [r.response["body"]["data"]["id"] for r in results if r.outcome == oc.DELIVERED]
    assert ids == [100, 101, 102, 103, 104]  # each outcome carries its own event's answer


def test_process_many_bounds_concurrency(wire: Wire, clock: FakeTime) -> None:
    state = {"now": 0, "max": 0}

    async def hold(url: URL, **kwargs: Any) -> None:
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        for _ in range(10):
            await asyncio.sleep(0)
        state["now"] -= 1

    wire.token(ACCESS)
    wire.create(201, callback=hold, repeat=True)
    engine = make_engine(clock, concurrency=3)

    async def scenario() -> list[oc.Outcome]:
        async with engine:
            return [o async for o in engine.process_many(lead(i) for i in range(12))]

    results = run(scenario())

    assert [r.outcome for r in results] == [oc.DELIVERED] * 12
    assert [r.index for r in results] == list(range(12))
    assert state["max"] == 3


# --------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------


def test_no_secret_reaches_outcomes_dead_letters_or_logs(
    wire: Wire, clock: FakeTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    # Bodies that echo credentials back, as a misbehaving gateway might.
    wire.token(ACCESS, ROTATED)
    wire.create(401, payload={"error": f"Invalid JWT token {ACCESS}"})
    wire.token(ACCESS_2, ROTATED_2)
    wire.create(201, payload={"data": {"id": 1}, "meta": {"seen": f"Bearer {ACCESS_2}"}})
    wire.create(500, payload={"errors": [{"detail": f"client_secret={CLIENT_SECRET} refresh={REFRESH}"}]}, repeat=5)
    wire.create(422, payload={"errors": [{"id": "validationError", "detail": f"bad {ROTATED} {ROTATED_2}"}]})
    wire.create(exception=aiohttp.ClientConnectionError(f"reset while sending {ACCESS_2}"))
    wire.create(201)
    dead = MemoryDeadLetters()
    engine = make_engine(clock, token_store=stored_tokens(tmp_path / "state"), dead_letters=dead)
    results = run(deliver(engine, lead(1), lead(2), lead(3), lead(4)))
    assert [r.outcome for r in results] == [oc.DELIVERED, oc.DEAD_LETTERED, oc.FAILED, oc.DELIVERED]

    # A later run that resumes from the stored chain (no mint) still knows its tokens are secret.
    wire.create(422, payload={"errors": [{"id": "validationError", "detail": f"{ACCESS_2} / {ROTATED_2}"}]})
    resumed = make_engine(clock, token_store=stored_tokens(tmp_path / "state"))
    results += run(deliver(resumed, lead(6)))
    assert resumed.mints == 0
    assert results[-1].cause == "http_422"

    # A refused refresh token, echoed back by the token endpoint.
    wire.token(status=400, payload={"error": "invalid_grant", "error_description": f"{REAUTHORISED} is revoked"})
    broken = make_engine(clock, dead_letters=dead, refresh_token=REAUTHORISED)
    results += run(deliver(broken, lead(5)))
    assert results[-1].cause == "reauthorisation_required"

    dumped = json.dumps([r.to_dict() for r in results]) + json.dumps(dead.entries())
    no_secrets(dumped)
    no_secrets(caplog.text)
    assert "***" in dumped  # the echoes were there and were masked
    assert "attempt" in caplog.text and "auth:" in caplog.text  # the logs were captured at all


# --------------------------------------------------------------------------
# defects found and fixed: header case, upsert replay, replay vs new letters
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers_for, expected",
    [
        (lambda now: {"retry-after": "20"}, 20.0),
        (lambda now: {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(now + 40)}, 40.0),
    ],
    ids=["retry-after", "x-ratelimit-reset"],
)
def test_429_with_lower_case_header_names_is_honoured(
    wire: Wire, clock: FakeTime, headers_for: Callable[[int], dict], expected: float
) -> None:
    wire.token(ACCESS)
    wire.create(429, headers=headers_for(int(time.time())))
    wire.create(201)
    engine = make_engine(clock, rng=MaxRandom())
    start = clock.now

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert expected - 1.5 <= clock.now - start <= expected + 0.5


def test_token_endpoint_429_with_lower_case_retry_after_is_honoured(wire: Wire, clock: FakeTime) -> None:
    wire.token(status=429, payload={"errors": [{"id": "rateLimitExceeded"}]}, headers={"retry-after": "7"})
    wire.token(ACCESS)
    wire.create(201)
    engine = make_engine(clock)

    [result] = run(deliver(engine, lead()))

    assert result.outcome == oc.DELIVERED
    assert clock.sleeps == pytest.approx([7.0], abs=0.01)


def test_upsert_lookup_exhausted_keeps_the_prospect_for_replay(wire: Wire, clock: FakeTime) -> None:
    wire.token(ACCESS)
    wire.create(422, payload=DUPLICATE_422)
    wire.lookup({"errors": [{"id": "internalServerError"}]}, status=500, repeat=5)
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    async def scenario() -> oc.Outcome:
        async with engine:
            result = await engine.process(lead())
            wire.add(
                "GET",
                re.compile(r"^https://api\.outreach\.test/api/v2/prospects(\?.*)?$"),
                repeat=True,
                payload={"data": [{"type": "prospect", "id": 4242, "attributes": {"emails": [], "tags": []}}]},
            )
            wire.create(422, payload=DUPLICATE_422, repeat=True)
            wire.patch(4242, 200)
            await engine.replay_dead_letters()
            return result

    result = run(scenario())

    assert result.outcome == oc.DEAD_LETTERED
    assert wire.kinds()[:3] == ["token", "create", "lookup"]
    # Replaying must write the prospect (create, or lookup + PATCH), not just repeat a GET.
    assert wire.kinds()[-1] in ("create", "patch")
    written = wire.sent[-1].json
    assert written and written["data"]["attributes"]["emails"] == ["jane@acme.com"]


def test_letter_written_during_a_replay_survives_it(wire: Wire, clock: FakeTime) -> None:
    release = asyncio.Event()

    async def create(url: URL, **kwargs: Any) -> CallbackResult:
        i = _email_index(kwargs)
        if i == 1:  # the replayed letter: answer only once the other event is dead-lettered
            await release.wait()
            return CallbackResult(status=201, payload={"data": {"id": 1}}, response_class=_CompatResponse)
        return CallbackResult(status=500, payload={}, response_class=_CompatResponse)

    wire.token(ACCESS)
    for _ in range(5):
        wire.create(500)  # lead 1 is dead-lettered first
    wire.create(callback=create, repeat=True)
    dead = MemoryDeadLetters()
    engine = make_engine(clock, dead_letters=dead)

    async def scenario() -> None:
        async with engine:
            await engine.process(lead(1))
            assert len(dead.entries()) == 1
            replay = asyncio.ensure_future(engine.replay_dead_letters())
            other = await engine.process(lead(2))
            assert other.outcome == oc.DEAD_LETTERED
            release.set()
            await replay

    run(scenario())

    assert [e["messageId"] for e in dead.entries()] == ["m12"]


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        ({"name": "Zoë", "tags": ["a", "b"], "n": 1.5}, '{"name":"Zoë","tags":["a","b"],"n":1.5}'),
        ({"id": 123456789012345678901234567890}, '{"id":123456789012345678901234567890}'),
        ({"score": float("nan"), "x": None}, '{"score":NaN,"x":null}'),  # as the standard library writes it
        ({"s": "\ud800"}, '{"s":"\\ud800"}'),  # a lone surrogate from the input: escaped
    ],
    ids=["plain", "huge-integer", "nan", "lone-surrogate"],
)
def test_request_bodies_are_written_as_compact_json(body: Any, wire: str) -> None:
    from engine.delivery.transport import encode_json

    assert encode_json(body).decode("utf-8", "surrogatepass") == wire
