"""The HTTP intake on a real loopback server, queueing into the real embedded queue.

What a client is promised: 200 only once the events are in the queue; 400
naming the problem; 401 for a bad signature, a stale timestamp or an
unknown key; 413 over the size cap; 429 with Retry-After when the backlog
is at its bound; 503 while draining. And no key or secret in any answer or
metric.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from engine.service.config import IntakeConfigError, load_intake_config
from engine.service.intake import RUNNER_OPTIONS, Intake, IntakeConfig, create_app
from engine.service.metrics import Metrics
from engine.state.sqlite.queue import QueueBusy, SqliteQueue

WRITE_KEY = "wk-live-8f2b6c1d9e"
SECRET = "signing-secret-5a7c3e9b1f"
IDENTIFY = {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}}
TRACK = {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "m-1"}


def signed(body: bytes, *, secret: str = SECRET, at_ms: int | None = None) -> dict[str, str]:
    """Headers as a Signal server client signs: HMAC-SHA256 over "<ms>.<body>"."""
    stamp = str(int(time.time() * 1000) if at_ms is None else at_ms)
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Timestamp": stamp, "X-Signature": f"sha256={digest}", "Content-Type": "application/json"}


def basic(key: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        "Content-Type": "application/json",
    }


class Client:
    def __init__(self, server: TestServer, session: aiohttp.ClientSession, intake: Intake, queue: SqliteQueue) -> None:
        self.server = server
        self.session = session
        self.intake = intake
        self.queue = queue

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, Any]:
        async with self.session.post(self.server.make_url(path), data=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text), resp.headers

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.server.make_url(path)) as resp:
            return resp.status, await resp.text()

    async def queued(self) -> list[dict[str, Any]]:
        entries = await self.queue.read("test", 1000, 0)
        return [json.loads(e.body) for e in entries]


async def _client(tmp_path: Path, **config: Any) -> AsyncIterator[Client]:
    queue = SqliteQueue(tmp_path / "state")
    intake = Intake(
        queue,
        IntakeConfig(write_keys=frozenset({WRITE_KEY, "wk-second-key-00"}), signing_secret=SECRET, **config),
        Metrics(),
    )
    server = TestServer(create_app(intake))
    await server.start_server(**RUNNER_OPTIONS)
    try:
        async with aiohttp.ClientSession() as session:
            yield Client(server, session, intake, queue)
    finally:
        await server.close()
        await queue.close()


def run(tmp_path: Path, test: Any, **config: Any) -> None:
    async def main() -> None:
        async for client in _client(tmp_path, **config):
            await test(client)

    asyncio.run(asyncio.wait_for(main(), 30))


# -- the signed API ------------------------------------------------------------


def test_a_signed_event_and_a_signed_batch_are_queued_before_the_200(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        body = json.dumps(TRACK).encode()
        status, answer, _ = await c.post("/v1/events", body, signed(body))
        assert (status, answer) == (200, {"success": True, "queued": 1})
        batch = json.dumps({"batch": [IDENTIFY, TRACK]}).encode()
        status, answer, _ = await c.post("/v1/events", batch, signed(batch))
        assert (status, answer["queued"]) == (200, 2)
        assert await c.queued() == [TRACK, IDENTIFY, TRACK]

    run(tmp_path, test)


@pytest.mark.parametrize(
    "tamper, code",
    [
        (lambda body, h: {**h, "X-Signature": "sha256=" + "0" * 64}, "bad_signature"),
        (lambda body, h: signed(body, secret="another-secret-xyz"), "bad_signature"),
        (lambda body, h: {k: v for k, v in h.items() if k != "X-Signature"}, "unauthorized"),
        (lambda body, h: signed(body, at_ms=int(time.time() * 1000) - 301_000), "stale_timestamp"),
        (lambda body, h: signed(body, at_ms=int(time.time() * 1000) + 301_000), "stale_timestamp"),
        (lambda body, h: {**h, "X-Timestamp": "yesterday"}, "unauthorized"),
    ],
)
def test_a_bad_signature_or_a_stale_timestamp_is_refused_and_nothing_is_queued(
    tmp_path: Path, tamper: Any, code: str
) -> None:
    async def test(c: Client) -> None:
        body = json.dumps(TRACK).encode()
        status, answer, _ = await c.post("/v1/events", body, tamper(body, signed(body)))
        assert (status, answer["code"]) == (401, code)
        assert SECRET not in json.dumps(answer)
        assert await c.queued() == []

    run(tmp_path, test)


def test_a_timestamp_within_five_minutes_is_accepted(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        body = json.dumps(TRACK).encode()
        status, _, _ = await c.post("/v1/events", body, signed(body, at_ms=int(time.time() * 1000) - 290_000))
        assert status == 200

    run(tmp_path, test)


def test_the_signature_covers_the_body_as_sent_so_an_altered_body_is_refused(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        body = json.dumps(TRACK).encode()
        headers = signed(body)
        status, answer, _ = await c.post("/v1/events", body.replace(b"m-1", b"m-2"), headers)
        assert (status, answer["code"]) == (401, "bad_signature")

    run(tmp_path, test)


# -- the Segment-compatible routes ----------------------------------------------


def test_segment_routes_take_the_write_key_as_basic_username_and_set_the_type(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        single = {k: v for k, v in TRACK.items() if k != "type"}
        assert (await c.post("/v1/track", json.dumps(single).encode(), basic(WRITE_KEY)))[0] == 200
        for kind in ("identify", "page", "screen", "group"):
            assert (await c.post(f"/v1/{kind}", b'{"userId": "u1"}', basic("wk-second-key-00")))[0] == 200
        batch = {"batch": [IDENTIFY, TRACK], "context": {"library": {"name": "sdk"}}, "sentAt": "2024-01-01T00:00:00Z"}
        status, answer, _ = await c.post("/v1/batch", json.dumps(batch).encode(), basic(WRITE_KEY))
        assert (status, answer["queued"]) == (200, 2)
        queued = await c.queued()
        assert [e["type"] for e in queued] == ["track", "identify", "page", "screen", "group", "identify", "track"]
        # The batch-wide context reaches each event.
        assert queued[-1]["context"] == {"library": {"name": "sdk"}}

    run(tmp_path, test)


def test_a_write_key_in_the_body_is_accepted_as_some_sdks_send_it(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        body = json.dumps({"batch": [TRACK], "writeKey": WRITE_KEY}).encode()
        assert (await c.post("/v1/batch", body, {"Content-Type": "application/json"}))[0] == 200
        body = json.dumps({"batch": [TRACK], "writeKey": "wk-guess"}).encode()
        assert (await c.post("/v1/batch", body, {"Content-Type": "application/json"}))[0] == 401

    run(tmp_path, test)


@pytest.mark.parametrize(
    "headers",
    [
        basic("wk-wrong-key"),
        basic(""),
        {"Authorization": "Bearer " + WRITE_KEY},
        {"Authorization": "Basic !!!not-base64"},
        {},
    ],
)
def test_a_wrong_or_missing_write_key_is_refused(tmp_path: Path, headers: dict[str, str]) -> None:
    async def test(c: Client) -> None:
        status, answer, _ = await c.post("/v1/batch", json.dumps({"batch": [TRACK]}).encode(), headers)
        assert status == 401 and answer["code"] == "unauthorized"
        assert WRITE_KEY not in json.dumps(answer)
        assert await c.queued() == []

    run(tmp_path, test)


def test_the_signed_route_does_not_take_a_write_key_nor_the_segment_routes_a_signature(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        body = json.dumps(TRACK).encode()
        assert (await c.post("/v1/events", body, basic(WRITE_KEY)))[0] == 401
        assert (await c.post("/v1/track", body, signed(body)))[0] == 401

    run(tmp_path, test)


# -- bodies ---------------------------------------------------------------------


def test_a_gzip_body_is_accepted_and_a_broken_one_is_a_400(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        packed = gzip.compress(json.dumps({"batch": [IDENTIFY, TRACK]}).encode())
        status, answer, _ = await c.post("/v1/batch", packed, {**basic(WRITE_KEY), "Content-Encoding": "gzip"})
        assert (status, answer["queued"]) == (200, 2)
        # Signed: the signature covers the body as sent, compressed.
        packed = gzip.compress(json.dumps(TRACK).encode())
        assert (await c.post("/v1/events", packed, {**signed(packed), "Content-Encoding": "gzip"}))[0] == 200
        status, answer, _ = await c.post("/v1/batch", packed[:-6], {**basic(WRITE_KEY), "Content-Encoding": "gzip"})
        assert status == 400 and "gzip" in answer["error"]
        status, answer, _ = await c.post(
            "/v1/batch", b"not gzip at all", {**basic(WRITE_KEY), "Content-Encoding": "gzip"}
        )
        assert status == 400 and "gzip" in answer["error"]
        assert len(await c.queued()) == 3

    run(tmp_path, test)


@pytest.mark.parametrize(
    "body, problem",
    [
        (b'{"batch": [', "not JSON"),
        (b"", "not JSON"),
        (b'[{"type": "track"}]', "must be a JSON object, not a list"),
        (b'{"batch": {"type": "track"}}', "'batch' must be a list of events, not an object"),
        (b'{"batch": [{"type": "track"}, 7]}', "batch[1] must be a JSON object, not a number"),
        (b'{"batch": [NaN]}', "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_a_malformed_body_is_a_400_naming_the_problem_and_nothing_is_queued(
    tmp_path: Path, body: bytes, problem: str
) -> None:
    async def test(c: Client) -> None:
        status, answer, _ = await c.post("/v1/batch", body, basic(WRITE_KEY))
        assert status == 400 and problem in answer["error"], answer
        assert await c.queued() == []

    run(tmp_path, test)


def test_a_body_over_the_cap_is_a_413_compressed_or_not(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        big = json.dumps({"batch": [{**TRACK, "properties": {"pad": "x" * 5000}}]}).encode()
        status, answer, _ = await c.post("/v1/batch", big, basic(WRITE_KEY))
        assert status == 413 and answer["code"] == "too_large"
        # A small gzip body that inflates past the cap (a zip bomb) is refused as well.
        bomb = gzip.compress(big)
        assert len(bomb) < 4096
        status, _, _ = await c.post("/v1/batch", bomb, {**basic(WRITE_KEY), "Content-Encoding": "gzip"})
        assert status == 413
        assert await c.queued() == []
        # Exactly at the cap is fine.
        assert (await c.post("/v1/batch", b" " * (4096 - 20) + b'{"batch": []}', basic(WRITE_KEY)))[0] == 200

    run(tmp_path, test, max_body_bytes=4096)


# -- backpressure, draining, operations ------------------------------------------


def test_a_full_backlog_answers_429_with_retry_after_and_takes_events_again_once_delivered(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        batch = json.dumps({"batch": [TRACK, TRACK, TRACK]}).encode()
        assert (await c.post("/v1/batch", batch, basic(WRITE_KEY)))[0] == 200
        status, answer, headers = await c.post("/v1/batch", batch, basic(WRITE_KEY))
        assert status == 429 and answer["code"] == "backlog_full" and int(headers["Retry-After"]) >= 1
        assert len(c.queue) == 3  # the refused batch is not half-queued
        entries = await c.queue.read("worker", 10, 0)
        await c.queue.ack([(e.id, {}) for e in entries])
        assert (await c.post("/v1/batch", batch, basic(WRITE_KEY)))[0] == 200

    run(tmp_path, test, max_backlog=5)


def test_while_draining_new_requests_get_503_and_readyz_says_so(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        assert (await c.get("/readyz"))[0] == 200
        c.intake.draining = True
        status, answer, headers = await c.post("/v1/batch", json.dumps({"batch": [TRACK]}).encode(), basic(WRITE_KEY))
        assert status == 503 and "Retry-After" in headers
        assert (await c.get("/readyz"))[0] == 503
        assert (await c.get("/healthz"))[0] == 200
        assert await c.queued() == []

    run(tmp_path, test)


def test_metrics_count_events_by_route_and_result_and_hold_no_secret(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        body = json.dumps({"batch": [IDENTIFY, TRACK]}).encode()
        await c.post("/v1/batch", body, basic(WRITE_KEY))
        await c.post("/v1/batch", body, basic("wk-wrong-key"))
        await c.post("/v1/events", body, signed(body))
        status, text = await c.get("/metrics")
        assert status == 200
        assert 'signal_events_received_total{result="accepted",route="batch"} 2.0' in text
        assert 'signal_events_received_total{result="unauthorized",route="batch"} 1.0' in text
        assert 'signal_events_received_total{result="accepted",route="events"} 2.0' in text
        assert "signal_queue_backlog_events" in text
        assert WRITE_KEY not in text and SECRET not in text
        assert SECRET not in repr(c.intake.config) and WRITE_KEY not in repr(c.intake.config)

    run(tmp_path, test)


def test_a_second_process_cannot_serve_the_same_state_directory(tmp_path: Path) -> None:
    async def test(c: Client) -> None:
        with pytest.raises(QueueBusy):
            SqliteQueue(tmp_path / "state")

    run(tmp_path, test)


# -- configuration ------------------------------------------------------------------


def test_keys_and_secret_come_from_the_environment_or_a_file_and_are_never_echoed(tmp_path: Path) -> None:
    config = load_intake_config(
        {"SIGNAL_WRITE_KEYS": " a-key-1234 , b-key-5678 ,", "SIGNAL_SIGNING_SECRET": "s3cr3t-abc"}
    )
    assert config.write_keys == {"a-key-1234", "b-key-5678"} and config.signing_secret == "s3cr3t-abc"
    path = tmp_path / "intake.yaml"
    path.write_text("write_keys: [file-key-1234, '${EXTRA_KEY}']\nsigning_secret: ${SECRET_FROM_ENV}\n")
    config = load_intake_config(
        {"SIGNAL_WRITE_KEYS": "env-key-0000", "EXTRA_KEY": "extra-key-999", "SECRET_FROM_ENV": "file-secret-1"},
        str(path),
    )
    assert config.write_keys == {"file-key-1234", "extra-key-999"} and config.signing_secret == "file-secret-1"
    with pytest.raises(IntakeConfigError, match="no write keys and no signing secret"):
        load_intake_config({})
    path.write_text("write_keys: [k1-abcdef]\nsigning_secret: ${UNSET_VAR_FOR_TEST}\n")
    with pytest.raises(IntakeConfigError, match=r"intake.yaml:2: signing_secret"):
        load_intake_config({}, str(path))
    path.write_text("write_key: k1-abcdef\n")
    with pytest.raises(IntakeConfigError, match=r"intake.yaml:1: unknown key 'write_key'") as caught:
        load_intake_config({}, str(path))
    assert "k1-abcdef" not in str(caught.value)


def test_the_cli_and_a_dry_run_do_not_import_the_service_dependencies() -> None:
    """redis, prometheus-client and aiohttp's server load only for serve, worker and tail."""
    import subprocess
    import sys

    code = (
        "import sys, engine.cli.main as m; from engine.cli import run; "
        "print(sorted(n for n in ('redis', 'prometheus_client', 'engine.service') if n in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
