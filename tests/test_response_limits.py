"""What a destination answers is bounded and must prove the delivery.

A real HTTP server on loopback answers; the engine runs the shipped Outreach
preset against it (token endpoint included) with a fake clock for backoffs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.runtime import Engine
from fakes import FakeTime

SETTINGS = {"client_id": "cid", "client_secret": "s3cret-limits", "refresh_token": "rt-limits-0001"}
LEAD = {
    "type": "track",
    "event": "Lead Submitted",
    "messageId": "m-1",
    "userId": "u-1",
    "traits": {"email": "jane@acme.test"},
    "context": {"consent": {"canonical": {"marketing": True}}},
}


Answer = Callable[[], web.Response]


async def serve(answers: list[Answer]) -> tuple[web.AppRunner, str, list[str]]:
    """A token endpoint that always mints, and a prospects endpoint that answers ``answers`` in turn (the last one repeats)."""
    seen: list[str] = []

    async def token(request: web.Request) -> web.Response:
        return web.json_response(
            {"access_token": "at-limits-0001", "refresh_token": "rt-limits-0002", "expires_in": 7200}
        )

    async def prospects(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        return (answers.pop(0) if len(answers) > 1 else answers[0])()

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/api/v2/prospects", prospects)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}", seen


async def deliver(answers: list[Answer], *, cap: int | None = None) -> tuple[Any, list[str]]:
    runner, base, seen = await serve(answers)
    preset = load_preset("outreach/lead-capture")
    if cap is not None:
        from dataclasses import replace

        preset = replace(preset, delivery=replace(preset.delivery, max_response_bytes=cap))
    clock = FakeTime()
    try:
        async with Engine.from_preset(
            preset, {**SETTINGS, "base_url": base}, sleep=clock.sleep, clock=clock.monotonic
        ) as engine:
            outcome = await engine.process(LEAD)
    finally:
        await runner.cleanup()
    return outcome, seen


def created() -> web.Response:
    return web.json_response({"data": {"type": "prospect", "id": 7}}, status=201)


def test_an_oversized_answer_is_an_error_not_a_memory_spike() -> None:
    outcome, seen = asyncio.run(
        deliver([lambda: web.Response(body=b"x" * (5 * 1024 * 1024), status=200)], cap=64 * 1024)
    )
    assert outcome.outcome == oc.DEAD_LETTERED
    assert outcome.cause == "response_too_large"
    assert len(seen) == 5  # retried like any transient failure, then kept for replay
    assert "65536 bytes" in outcome.detail


def test_an_answer_within_the_cap_is_read_whole() -> None:
    outcome, _ = asyncio.run(
        deliver(
            [lambda: web.json_response({"data": {"type": "prospect", "id": 7}, "pad": "y" * 50_000}, status=201)],
            cap=64 * 1024,
        )
    )
    assert outcome.outcome == oc.DELIVERED


@pytest.mark.parametrize(
    "garbage",
    [
        lambda: web.Response(text="<html>OK</html>", status=200, content_type="text/html"),
        lambda: web.Response(status=200),
        lambda: web.json_response({"data": {"type": "prospect"}}, status=201),
    ],
    ids=["html", "empty", "no-id"],
)
def test_a_2xx_that_does_not_prove_the_delivery_is_retried_then_dead_lettered(garbage: Answer) -> None:
    outcome, seen = asyncio.run(deliver([garbage]))
    assert outcome.outcome == oc.DEAD_LETTERED
    assert len(seen) == 5
    assert "without the prospect" in outcome.detail


def test_a_garbage_answer_then_a_proof_is_delivered() -> None:
    outcome, seen = asyncio.run(deliver([lambda: web.Response(text="OK", status=200), created]))
    assert outcome.outcome == oc.DELIVERED and len(seen) == 2
    assert json.dumps(outcome.response["body"]) == '{"data": {"type": "prospect", "id": 7}}'


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        # An id beyond 64 bits stays the integer the destination wrote (orjson alone would give a float).
        (
            lambda: web.Response(
                body=b'{"data": {"type": "prospect", "id": 123456789012345678901234567890}}',
                status=201,
                content_type="application/json",
            ),
            {"data": {"type": "prospect", "id": 123456789012345678901234567890}},
        ),
        # A declared charset other than UTF-8 is honoured.
        (
            lambda: web.Response(
                body='{"data": {"type": "prospect", "id": 7, "name": "Zoë"}}'.encode("latin-1"),
                status=201,
                content_type="application/json",
                charset="latin-1",
            ),
            {"data": {"type": "prospect", "id": 7, "name": "Zoë"}},
        ),
        # NaN is not JSON, but the standard library reads it: so does the engine, as before.
        (
            lambda: web.Response(
                body=b'{"data": {"type": "prospect", "id": 7, "score": NaN}}',
                status=201,
                content_type="application/json",
            ),
            None,
        ),
    ],
    ids=["huge-integer", "latin-1", "nan"],
)
def test_an_answer_is_read_exactly_as_json_reads_it(answer: Answer, body: Any) -> None:
    outcome, _ = asyncio.run(deliver([answer]))
    assert outcome.outcome == oc.DELIVERED
    if body is None:
        score = outcome.response["body"]["data"]["score"]
        assert score != score  # NaN
    else:
        assert outcome.response["body"] == body
        assert type(outcome.response["body"]["data"]["id"]) is int
