"""Property-based: arbitrary bodies against both intake modes, each with its worker and a real destination.

Whatever a client sends (random bytes, any JSON, any unicode, lone
surrogates, deep nesting, odd batch shapes, gzip or not, any route), for
the embedded SQLite queue and for the Redis queue on a real redis-server:

* the answer is never a 5xx;
* the next valid request is answered 200 as if nothing happened;
* every event acknowledged with a 200 ends with exactly one outcome.

The same holds for any bytes in the headers the intake reads
(``Authorization``, ``X-Timestamp``, ``X-Signature``, ``Content-Encoding``,
``Content-Type``), sent as raw bytes on a socket, as no HTTP client would.

The examples are derandomized (a fixed seed: the same ones on every run)
and few, so the suite stays fast and deterministic.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.compile.compiler import load_preset
from engine.language.settings import resolve
from engine.pipeline.identity import IdentityMemory
from engine.pipeline.prepare import Pipeline
from engine.runtime import Engine
from engine.sandbox.outreach import SandboxConfig, start_sandbox
from engine.service.intake import RUNNER_OPTIONS, Intake, IntakeConfig, create_app
from engine.service.metrics import Metrics
from engine.service.worker import Worker
from engine.state.identity import IdentityLimits
from redis_server import REDIS_SERVER, RedisServer
from test_delivery_sandbox import fast_preset, unique_credentials

WRITE_KEY = "wk-prop-5c1e9a7b3d"
SECRET = "sig-prop-2b8f4d6a0c"
CONSENT = {"consent": {"canonical": {"marketing": True}}}
VALID = json.dumps(
    {
        "batch": [
            {"type": "identify", "userId": "ok", "traits": {"email": "ok@example.com"}, "context": CONSENT},
            {"type": "page", "anonymousId": "ok"},
        ]
    }
).encode()
EXAMPLES = settings(
    max_examples=60, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)


class Stack:
    """An intake, a worker and an Outreach sandbox on one event loop in a thread; posts come from the test thread."""

    def __init__(self, tmp: Path, redis_url: str | None) -> None:
        self.tmp = tmp
        self.redis_url = redis_url
        self.outcomes: list[dict[str, Any]] = []
        self.accepted = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="property-stack", daemon=True)
        self.thread.start()
        self._call(self._start())

    def _call(self, work: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    async def _start(self) -> None:
        creds = unique_credentials()
        self.sandbox, base = await start_sandbox(SandboxConfig(**creds), port=0)
        preset = load_preset(str(fast_preset(self.tmp)))
        values = resolve(preset.settings, {**creds, "base_url": base}, require=True)
        remember = None
        if self.redis_url is None:
            from engine.state.sqlite.queue import SqliteQueue

            self.queue: Any = SqliteQueue(self.tmp / "state")
            self.engine = Engine(preset, values, state=self.tmp / "state")
        else:
            from engine.state.redis import RedisState

            self.state = RedisState(self.redis_url)
            self.queue = self.state.queue(preset.name)
            pipeline = Pipeline(
                preset,
                values,
                IdentityMemory.for_preset(
                    preset.identity, self.state.identity(preset.name, IdentityLimits.of(preset.identity))
                ),
            )
            remember = pipeline.learn_identity  # serve --redis writes identity at the door
            self.engine = Engine(preset, values, state=RedisState(self.redis_url, identity_writes=False))
        await self.engine.__aenter__()
        self.worker = Worker(self.engine, self.queue, "prop", emit=self.outcomes.append, read_block_seconds=0.02)
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self.worker.run(self.stop))
        intake = Intake(
            self.queue,
            IntakeConfig(write_keys=frozenset({WRITE_KEY}), signing_secret=SECRET),
            Metrics(),
            remember=remember,
        )
        self.runner = web.AppRunner(create_app(intake), access_log=None, **RUNNER_OPTIONS)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    def close(self) -> None:
        async def stop() -> None:
            self.stop.set()
            await asyncio.wait_for(self.task, 15)
            await self.runner.cleanup()
            await self.engine.__aexit__(None, None, None)
            await self.queue.close()
            await self.sandbox.cleanup()

        try:
            self._call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    # -- from the test thread ---------------------------------------------------------------
    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def post_raw(self, path: str, body: bytes, headers: list[tuple[str, bytes]]) -> tuple[int, Any]:
        """A request written byte for byte: header values no HTTP client library would send."""
        head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
        request = (
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            ).encode()
            + head
            + b"\r\n"
            + body
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            conn.sendall(request)
            raw = b""
            while chunk := conn.recv(65536):
                raw += chunk
        status_line, _, rest = raw.partition(b"\r\n")
        head, _, answer = rest.partition(b"\r\n\r\n")
        is_json = b"application/json" in head.lower()
        return int(status_line.split()[1]), json.loads(answer) if is_json else answer

    def settle(self) -> None:
        """Wait until every acknowledged event has its outcome; then check there is exactly one each."""
        deadline = time.monotonic() + 20
        while len(self.outcomes) < self.accepted:
            assert not self.task.done(), f"the worker stopped: {self.task.exception()!r}"
            assert time.monotonic() < deadline, f"{self.accepted} events accepted, {len(self.outcomes)} outcomes"
            time.sleep(0.01)
        entries = [o["entry"] for o in self.outcomes]
        assert len(entries) == len(set(entries)) == self.accepted


@pytest.fixture(scope="module")
def redis_for_properties() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = request.getfixturevalue("redis_for_properties").url if request.param == "redis" else None
    running = Stack(tmp_path_factory.mktemp(f"stack-{request.param}"), url)
    try:
        yield running
    finally:
        running.close()


# -- what clients send ---------------------------------------------------------------------------

# Any code point, lone surrogates included (JSON can escape them; UTF-8 cannot carry them).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | any_text
any_json = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4), max_leaves=12
)


def nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"n": leaf}
    return leaf


@st.composite
def events(draw: st.DrawFn) -> Any:
    """Mostly event-like objects (so the pipeline's every branch runs), with hostile values anywhere."""
    if draw(st.integers(0, 9)) == 0:
        return draw(any_json)
    event: dict[str, Any] = {
        "type": draw(
            st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "", "TRACK"]) | any_text
        ),
        "messageId": draw(st.none() | any_text | st.integers() | st.sampled_from(["m-\ud800", "dup"])),
        "userId": draw(st.sampled_from(["u1", "u2", "u\udfff"]) | any_text | any_json),
    }
    if draw(st.booleans()):
        event["event"] = draw(st.sampled_from(["Demo Requested", "Signed Up", "Lead Submitted"]) | any_text)
    if draw(st.booleans()):
        event["traits"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "email": st.sampled_from(["a@example.com", "b\ud800@example.com", "not-an-email"]) | any_text,
                    "firstName": any_text,
                    "phone": any_text,
                    "country": any_text,
                },
            )
            | any_json
        )
    if draw(st.booleans()):
        event["context"] = draw(st.just(CONSENT) | any_json)
    if draw(st.booleans()):
        event["properties"] = nested(draw(st.sampled_from([1, 10, 40, 62, 63, 70, 300])), draw(scalars))
    return event


def encode(value: Any, how: str) -> bytes:
    if how == "ascii":
        return json.dumps(value).encode()  # lone surrogates as \\udXXX escapes
    text = json.dumps(value, ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")  # lone surrogates as bytes UTF-8 forbids


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    route = draw(st.sampled_from(["/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/events"]))
    shape = draw(st.sampled_from(["batch", "event", "json", "bytes", "deep"]))
    if shape == "batch":
        body = encode(
            {"batch": draw(st.lists(events(), max_size=6)), "context": draw(st.none() | any_json)},
            draw(st.sampled_from(["ascii", "raw"])),
        )
    elif shape == "event":
        body = encode(draw(events()), draw(st.sampled_from(["ascii", "raw"])))
    elif shape == "json":
        body = encode(draw(any_json), draw(st.sampled_from(["ascii", "raw"])))
    elif shape == "bytes":
        body = draw(st.binary(max_size=300))
    else:
        depth = draw(st.sampled_from([64, 65, 1000, 5000, 20000]))
        body = draw(st.sampled_from([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth]))
    headers = {"Content-Type": "application/json"}
    if draw(st.booleans()):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    if route == "/v1/events":
        stamp = str(int(time.time() * 1000) + draw(st.integers(0, 10**6)))  # fresh: no two examples alike
        digest = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers.update({"X-Timestamp": stamp, "X-Signature": f"sha256={digest}"})
    else:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return route, body, headers


@given(request=requests())
@EXAMPLES
def test_any_body_is_200_or_a_4xx_and_never_affects_the_next_request(stack: Stack, request: Any) -> None:
    route, body, headers = request
    status, answer = stack.post(route, body, headers)
    assert status == 200 or 400 <= status < 500, (status, answer)
    if status == 200:
        stack.accepted += answer["queued"]
    else:
        assert set(answer) >= {"error", "code", "message"} and answer["message"]
    status, answer = stack.post(
        "/v1/batch",
        VALID,
        {
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
        },
    )
    assert (status, answer) == (200, {"success": True, "queued": 2})
    stack.accepted += 2
    stack.settle()


# -- what clients send in the headers ----------------------------------------------------------

UNICODE_DIGITS = ["\u0660", "\u06f0", "\uff10", "\u0966", "\U0001d7ce"]  # Arabic-Indic, Persian, full-width, ...


def header_bytes() -> st.SearchStrategy[bytes]:
    """Any bytes a header value can hold on the wire (all but CR and LF, which would end it)."""
    text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40).map(
        lambda t: t.encode("utf-8", "surrogatepass")
    )
    return (st.binary(max_size=60) | text).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def header_requests(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """A valid request with one header the intake reads replaced by arbitrary bytes, or made almost right."""
    route = draw(st.sampled_from(["/v1/batch", "/v1/track", "/v1/events"]))
    body = json.dumps(
        {"batch": [{"type": "track", "event": "Signed Up", "userId": "h"}]}
        if route != "/v1/track"
        else {"event": "Signed Up", "userId": "h"}
    ).encode()
    stamp = str(int(time.time() * 1000) + draw(st.integers(0, 10**6)))  # fresh: no two examples alike
    if draw(st.booleans()):  # the same number in other scripts' digits, which int() would take
        zero = draw(st.sampled_from(UNICODE_DIGITS))
        stamp = "".join(chr(ord(zero) + int(d)) for d in stamp)
    wire_stamp = stamp.encode("utf-8")
    user = draw(st.sampled_from([WRITE_KEY.encode(), "wk-\u00e9".encode(), b"\xff\xfe", b""]))
    headers: dict[str, bytes] = {"Content-Type": b"application/json"}
    if route == "/v1/events":
        digest = hmac.new(SECRET.encode(), wire_stamp + b"." + body, hashlib.sha256).hexdigest()
        headers.update({"X-Timestamp": wire_stamp, "X-Signature": b"sha256=" + digest.encode()})
        fuzzed = draw(st.sampled_from(["X-Timestamp", "X-Signature", "Content-Encoding", "Content-Type"]))
    else:
        headers["Authorization"] = b"Basic " + base64.b64encode(user + b":")
        fuzzed = draw(st.sampled_from(["Authorization", "Content-Encoding", "Content-Type"]))
    value = draw(header_bytes())
    almost = {
        "Authorization": [
            b"Basic " + value,
            b"basic " + value + b"=",
            b"Bearer " + value,
            b"Basic " + "\u00e9".encode() + value,
        ],
        "X-Timestamp": [value, wire_stamp + value, b" " + value + wire_stamp],
        "X-Signature": [value, b"sha256=" + value, b"SHA256=" + value.upper()],
        "Content-Encoding": [value, b"gzip" + value, b"GZIP"],
        "Content-Type": [value, b"application/json; charset=" + value],
    }[fuzzed]
    headers[fuzzed] = draw(st.sampled_from(almost))
    return route, body, list(headers.items())


@given(request=header_requests())
@EXAMPLES
def test_any_header_bytes_are_200_or_a_4xx_and_never_affect_the_next_request(stack: Stack, request: Any) -> None:
    route, body, headers = request
    status, answer = stack.post_raw(route, body, headers)
    assert status == 200 or 400 <= status < 500, (status, answer)
    if status == 200:
        stack.accepted += answer["queued"]
    elif status != 400 or isinstance(answer, dict):  # aiohttp's own 400 for a head it cannot parse is plain text
        assert set(answer) >= {"error", "code", "message"} and answer["message"]
    status, answer = stack.post(
        "/v1/batch",
        VALID,
        {
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
        },
    )
    assert (status, answer) == (200, {"success": True, "queued": 2})
    stack.accepted += 2
    stack.settle()
