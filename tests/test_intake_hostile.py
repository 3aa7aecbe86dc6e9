"""The intake against hostile or unlucky clients: any bytes, any JSON, slow sockets, replays, a store that cannot write.

The promise: every request gets 200 or a 4xx naming the problem (a 503 only
when the store truly cannot take the events), and no request can change how
the next one is answered.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from engine.service.event_json import MAX_DEPTH
from engine.service.intake import RUNNER_OPTIONS, Intake, IntakeConfig, create_app
from engine.service.metrics import Metrics
from engine.service.replay import COMMITTED, IN_FLIGHT, RESERVED, SignatureMemory
from engine.state.sqlite.queue import SqliteQueue
from test_service_intake import IDENTIFY, SECRET, TRACK, WRITE_KEY, Client, basic, run, signed

VALID = json.dumps({"batch": [IDENTIFY, TRACK]}).encode()


async def _next_request_is_unaffected(c: Client) -> None:
    status, answer, _ = await c.post("/v1/batch", VALID, basic(WRITE_KEY))
    assert (status, answer) == (200, {"success": True, "queued": 2})


# -- lone surrogates ---------------------------------------------------------------------------


def test_a_lone_surrogate_is_accepted_escaped_and_the_next_request_is_unaffected(tmp_path: Path) -> None:
    body = (
        b'{"batch": [{"type": "track", "event": "Signed Up", "userId": "u\\ud800", "messageId": "m-\\udfff", '
        b'"properties": {"note": "cut \\ud83d", "\\ud800key": ["\\uDC00"], "pair": "\\ud83d\\ude00"}}]}'
    )

    async def test(c: Client) -> None:
        for _ in range(2):  # twice: the first must not leave anything behind for the second
            status, answer, _ = await c.post("/v1/batch", body, basic(WRITE_KEY))
            assert (status, answer) == (200, {"success": True, "queued": 1})
            await _next_request_is_unaffected(c)
        assert not c.queue.conn.in_transaction
        queued = await c.queued()
        assert queued[0] == {
            "type": "track",
            "event": "Signed Up",
            "userId": "u\\ud800",
            "messageId": "m-\\udfff",
            "properties": {"note": "cut \\ud83d", "\\ud800key": ["\\udc00"], "pair": "\U0001f600"},
        }
        assert [e.get("messageId") for e in queued] == ["m-\\udfff", None, "m-1", "m-\\udfff", None, "m-1"]

    run(tmp_path, test)


def test_a_queue_write_that_fails_for_any_reason_leaves_no_transaction_open(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        with pytest.raises(UnicodeEncodeError):
            await c.queue.append(['{"messageId": "\ud800"}'])  # what the intake used to hand it
        assert not c.queue.conn.in_transaction
        await _next_request_is_unaffected(c)

    run(tmp_path, test)


# -- depth, size, numbers ----------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    """A single track event whose body is ``depth`` containers deep (the event itself is the first)."""
    inner = '{"a": ' * (depth - 1) + "1" + "}" * (depth - 1)
    return ('{"type": "track", "event": "E", "messageId": "deep", "properties": ' + inner + "}").encode()


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 5_000, 50_000])
def test_a_body_nested_deeper_than_the_bound_is_a_400_naming_it(tmp_path: Path, depth: int) -> None:
    async def test(c: Client) -> None:
        status, answer, _ = await c.post("/v1/track", _nested(depth), basic(WRITE_KEY))
        assert (status, answer["code"], answer["message"]) == (
            400,
            "bad_request",
            f"the body is nested more than {MAX_DEPTH} levels deep",
        )
        lists = b"[" * depth + b"]" * depth
        status, answer, _ = await c.post("/v1/batch", lists, basic(WRITE_KEY))
        assert status == 400
        await _next_request_is_unaffected(c)

    run(tmp_path, test)


def test_a_body_at_the_depth_bound_is_taken(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        status, _, _ = await c.post("/v1/track", _nested(MAX_DEPTH), basic(WRITE_KEY))
        assert status == 200

    run(tmp_path, test)


@pytest.mark.parametrize(
    "body, problem",
    [
        (b'{"type": "track", "n": 1e999}', "the number 1e999 is out of range"),
        (b'{"type": "track", "n": -Infinity}', "-Infinity is not JSON"),
        (b'{"type": "track", "n": ' + b"9" * 5000 + b"}", "Exceeds the limit (4300 digits)"),
    ],
)
def test_numbers_json_cannot_carry_are_a_400(tmp_path: Path, body: bytes, problem: str) -> None:
    async def test(c: Client) -> None:
        status, answer, _ = await c.post("/v1/track", body, basic(WRITE_KEY))
        assert status == 400 and problem in answer["message"]
        await _next_request_is_unaffected(c)

    run(tmp_path, test)


# -- routes and methods ------------------------------------------------------------------------


def test_unknown_routes_and_methods_answer_json_in_the_error_shape(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        async with c.session.get(c.server.make_url("/nowhere")) as resp:
            assert resp.status == 404
            assert await resp.json() == {
                "success": False,
                "code": "not_found",
                "error": "no route GET /nowhere",
                "message": "no route GET /nowhere",
            }
        async with c.session.get(c.server.make_url("/v1/batch")) as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
            answer = await resp.json()
            assert (
                answer["code"] == "method_not_allowed"
                and answer["message"] == "/v1/batch does not take GET (it takes POST)"
            )
        await _next_request_is_unaffected(c)

    run(tmp_path, test)


# -- slow clients ------------------------------------------------------------------------------


def _raw(c: Client) -> socket.socket:
    conn = socket.create_connection((c.server.host, c.server.port), timeout=5)
    return conn


def _read_until_closed(conn: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    start = time.monotonic()
    conn.settimeout(limit)
    data = b""
    try:
        while chunk := conn.recv(4096):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for over {limit}s (got {data[:80]!r})") from None
    return data, time.monotonic() - start


def test_a_client_that_sends_half_a_request_head_is_closed_within_the_idle_timeout(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        def half_head() -> tuple[bytes, float]:
            with _raw(c) as conn:
                conn.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Len")
                return _read_until_closed(conn, 5)

        def silent() -> tuple[bytes, float]:
            with _raw(c) as conn:
                return _read_until_closed(conn, 5)

        (data, took), (nothing, idle) = await asyncio.gather(asyncio.to_thread(half_head), asyncio.to_thread(silent))
        assert data == b"" and nothing == b""
        assert took < 2.5 and idle < 2.5  # closed at the 0.5 s timeout (ceil'd by aiohttp), not held
        await _next_request_is_unaffected(c)

    run(tmp_path, test, idle_timeout_seconds=0.5, body_timeout_seconds=0.5)


def test_a_client_that_sends_half_a_body_gets_408_and_is_closed_within_the_body_timeout(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        def half_body() -> tuple[bytes, float]:
            with _raw(c) as conn:
                auth = basic(WRITE_KEY)["Authorization"]
                conn.sendall(
                    f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
                    + VALID[:20]
                )
                return _read_until_closed(conn, 5)

        data, took = await asyncio.to_thread(half_body)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["code"] == "request_timeout"
        assert took < 3
        assert await c.queued() == []
        await _next_request_is_unaffected(c)

    run(tmp_path, test, idle_timeout_seconds=5, body_timeout_seconds=0.5)


# -- header bytes ------------------------------------------------------------------------------


def test_header_bytes_no_client_library_sends_are_a_401_not_a_500(tmp_path: Path) -> None:
    now_ms = str(int(time.time() * 1000))
    arabic = now_ms.translate(
        str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")
    )
    full_width = now_ms.translate(
        str.maketrans("0123456789", "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19")
    )
    cases = [
        ("/v1/events", f"X-Timestamp: {arabic}\r\nX-Signature: sha256=00".encode()),
        ("/v1/events", f"X-Timestamp: {full_width}\r\nX-Signature: sha256=00".encode()),
        ("/v1/events", f"X-Timestamp: 1_{now_ms}\r\nX-Signature: sha256=00".encode()),
        ("/v1/track", "Authorization: Basic \u00e9".encode()),
        ("/v1/batch", b"Authorization: Basic \xff\xfe"),
    ]

    async def test(c: Client) -> None:
        def send(path: str, header: bytes) -> bytes:
            with _raw(c) as conn:
                conn.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(VALID)}\r\n".encode()
                    + header
                    + b"\r\n\r\n"
                    + VALID
                )
                return _read_until_closed(conn, 5)[0]

        for path, header in cases:
            head, _, body = (await asyncio.to_thread(send, path, header)).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401 "), (header, head, body)
            assert json.loads(body)["code"] == "unauthorized"
        assert await c.queued() == []
        await _next_request_is_unaffected(c)

    run(tmp_path, test)


# -- replays -----------------------------------------------------------------------------------


def test_a_replayed_signed_request_is_refused_and_a_refused_one_may_be_sent_again(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        body = json.dumps(TRACK).encode()
        headers = signed(body)
        c.intake.draining = True
        status, _, _ = await c.post("/v1/events", body, headers)
        assert status == 503  # not accepted: the client's retry of the same bytes must pass
        c.intake.draining = False
        status, _, _ = await c.post("/v1/events", body, headers)
        assert status == 200
        status, answer, _ = await c.post("/v1/events", body, headers)
        assert (status, answer["code"]) == (409, "replayed")
        again = signed(body, at_ms=int(time.time() * 1000) + 1)  # the same event, signed anew: a new request
        assert (await c.post("/v1/events", body, again))[0] == 200
        assert len(await c.queued()) == 2

    run(tmp_path, test)


class SlowThenFailing(SqliteQueue):
    """The real queue, whose append waits for the test's go and then meets a store that refuses every write."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.appending = asyncio.Event()
        self.go = asyncio.Event()

    async def append(self, bodies: Sequence[str]) -> None:
        self.appending.set()
        await self.go.wait()
        await super().append(bodies)


def test_a_copy_of_a_signed_request_still_in_flight_is_told_to_retry_and_passes_when_the_first_fails(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        queue = SlowThenFailing(tmp_path / "state")
        intake = Intake(queue, IntakeConfig(signing_secret=SECRET), Metrics())
        server = TestServer(create_app(intake))
        await server.start_server(**RUNNER_OPTIONS)
        body = json.dumps(TRACK).encode()
        headers = signed(body)
        try:
            async with aiohttp.ClientSession() as session:
                c = Client(server, session, intake, queue)
                queue.conn.execute("PRAGMA query_only = ON")  # the first copy's write will fail
                first = asyncio.ensure_future(c.post("/v1/events", body, headers))
                await queue.appending.wait()
                status, answer, answered = await c.post("/v1/events", body, headers)
                assert (status, answer["code"], answered["Retry-After"]) == (429, "in_flight", "1")
                queue.go.set()
                status, answer, _ = await first
                assert (status, answer["code"]) == (503, "unavailable")
                queue.conn.execute("PRAGMA query_only = OFF")
                status, answer, _ = await c.post("/v1/events", body, headers)  # the client's retry: not lost
                assert (status, answer) == (200, {"success": True, "queued": 1})
                status, answer, _ = await c.post("/v1/events", body, headers)
                assert (status, answer["code"]) == (409, "replayed")  # accepted once: now a replay
                assert [e["messageId"] for e in await c.queued()] == ["m-1"]
        finally:
            await server.close()
            await queue.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_remembered_signatures_stay_bounded_however_often_one_is_reserved_and_forgotten() -> None:
    now = [1000.0]
    memory = SignatureMemory(600.0, 10, lambda: now[0])
    digest = bytes(32)
    tracemalloc.start()
    try:
        assert memory.reserve(digest) == RESERVED
        memory.forget(digest)
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):  # a client retrying through 429s and 503s
            assert memory.reserve(digest) == RESERVED
            memory.forget(digest)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 16 * 1024, f"{after - before} bytes kept for one signature"
    assert len(memory) == 0
    for i in range(25):  # and over the limit, the oldest go first
        assert memory.reserve(bytes([i]) * 32) == RESERVED
        now[0] += 1
    assert len(memory) == 10
    assert memory.reserve(bytes([24]) * 32) == IN_FLIGHT and memory.reserve(bytes([0]) * 32) == RESERVED
    memory.commit(bytes([24]) * 32)
    assert memory.reserve(bytes([24]) * 32) == COMMITTED
    now[0] += 601  # past the window: forgotten, as their timestamps are stale by now
    assert memory.reserve(bytes([24]) * 32) == RESERVED and len(memory) == 1


# -- a store that cannot write -----------------------------------------------------------------


def test_readyz_is_503_while_the_queue_cannot_take_writes_and_posts_get_503_not_500(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        assert (await c.get("/readyz"))[0] == 200
        c.queue.conn.execute("PRAGMA query_only = ON")  # SQLite refuses every write, as on a read-only store
        status, text = await c.get("/readyz")
        assert status == 503 and "cannot take writes" in json.loads(text)["status"]
        status, answer, _ = await c.post("/v1/batch", VALID, basic(WRITE_KEY))
        assert (status, answer["code"]) == (503, "unavailable")
        c.queue.conn.execute("PRAGMA query_only = OFF")
        assert (await c.get("/readyz"))[0] == 200
        await _next_request_is_unaffected(c)

    run(tmp_path, test)


# -- serve's stderr ----------------------------------------------------------------------------


def test_serve_logs_a_broken_request_in_one_line_without_a_traceback_and_closes_slow_clients(tmp_path: Path) -> None:
    from service_helpers import Service, send, write_key_headers
    from test_delivery_sandbox import unique_credentials, write_settings

    settings = write_settings(tmp_path / "settings.yaml", "http://127.0.0.1:9", unique_credentials())
    serve = Service(
        "serve",
        "outreach/lead-capture",
        "--settings",
        settings,
        "--state",
        tmp_path / "state",
        "--port",
        "0",
        "--idle-timeout",
        "0.5",
        "--body-timeout",
        "0.5",
        "--quiet",
        cwd=tmp_path,
        name="serve",
    )
    try:
        host, port = serve.url.removeprefix("http://").split(":")
        for garbage in (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http\r\n\r\n",  # TLS to a plain port
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
            b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n",
        ):
            with socket.create_connection((host, int(port)), timeout=5) as conn:
                conn.sendall(garbage)
                answer, _ = _read_until_closed(conn, 5)
                assert answer[:13] in (b"HTTP/1.1 400 ", b"HTTP/1.0 400 "), answer[:80]
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\n")
            assert _read_until_closed(conn, 5)[0] == b""
        assert send(serve.url + "/v1/nowhere", b"{}", write_key_headers())[0] == 404
        assert send(serve.url + "/v1/batch", VALID, write_key_headers())[0] == 200
    finally:
        serve.stop()
    stderr = serve.stderr()
    assert "Traceback" not in stderr and "  File " not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[0] == f"listening on {serve.url}"  # the only line serve says about itself here
    lines = lines[1:]
    # The two malformed requests, a line each (the TLS handshake is noise on a public port: not logged).
    assert len(lines) == 2 and all(line.startswith("signal-engine: intake: ") for line in lines), stderr
