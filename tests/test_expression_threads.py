"""An engine built on one thread and used on others gets outcomes, never a crash.

A compiled jsonatapy expression raises pyo3's PanicException (a
BaseException, so it escapes ``except Exception``) when used from a thread
other than the one that compiled it, and prints a traceback when freed on
another thread. The adapter must make both impossible for a host.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.language.expressions import Expression
from engine.language.settings import resolve
from engine.pipeline.prepare import Pipeline
from engine.runtime import Engine
from engine.sandbox.outreach import SandboxConfig, start_sandbox

PRESET = "outreach/lead-capture"
CONSENTED = {"consent": {"canonical": {"marketing": True}}}


def lead(i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Demo Requested",
        "userId": f"u{i}",
        "messageId": f"m{i}",
        "traits": {
            "email": f"lead{i}@acme.com",
            "firstName": "Jane",
            "lastName": f"Doe{i}",
            "phone": "+44 7700 900123",
        },
        "context": CONSENTED,
    }


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What Python would print as 'Exception ignored in ...' (e.g. an object freed on the wrong thread)."""
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(f"{info.exc_type.__name__}: {info.exc_value}"))
    return seen


def in_thread(work: Any) -> Any:
    """Run ``work`` on a new thread, returning its result or raising whatever it raised (BaseException too)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - a PanicException must reach the test
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if "error" in box:
        raise box["error"]
    return box["result"]


def test_an_expression_compiled_here_evaluates_on_another_thread(unraisable: list[str]) -> None:
    expr = Expression.compile('{"name": $join([first, last], " "), "n": $count(tags)}')
    assert expr.evaluate({"first": "Jane", "last": "Doe", "tags": [1, 2]}) == {"name": "Jane Doe", "n": 2}
    assert in_thread(lambda: expr.evaluate({"first": "Bo", "tags": []})) == {"name": "Bo", "n": 0}  # noqa: F821 - deleted below on purpose
    del expr
    gc.collect()
    assert unraisable == []


def test_an_expression_compiled_on_a_thread_that_ended_still_evaluates_here(unraisable: list[str]) -> None:
    expr = in_thread(lambda: Expression.compile("a & b"))
    assert in_thread(lambda: expr.evaluate({"a": "x", "b": "y"})) == "xy"  # noqa: F821 - deleted below on purpose
    assert expr.evaluate({"a": "1", "b": "2"}) == "12"
    del expr
    gc.collect()
    assert unraisable == []


def test_a_pipeline_built_on_one_thread_prepares_on_many(unraisable: list[str]) -> None:
    preset = load_preset(PRESET)
    pipeline = Pipeline(preset, resolve(preset.settings, {}, require=False))
    expected = [pipeline.dry_run(lead(i), i).to_dict() for i in range(40)]
    assert {o["outcome"] for o in expected} == {oc.WOULD_SEND}

    fresh = Pipeline(preset, resolve(preset.settings, {}, require=False))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: fresh.dry_run(lead(i), i).to_dict(), range(40)))  # noqa: F821 - deleted below on purpose
    assert results == expected
    del pipeline, fresh, preset
    gc.collect()
    assert unraisable == []


def test_an_engine_built_on_one_thread_delivers_from_another(unraisable: list[str]) -> None:
    """The embedding host's way: build at start-up, process on a worker thread with its own event loop."""
    ready = threading.Event()
    stop = threading.Event()
    where: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            runner, base = await start_sandbox(SandboxConfig(), port=0)
            where["base"] = base
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)
            await runner.cleanup()

        asyncio.run(main())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert ready.wait(30)
    try:
        engine = Engine.from_preset(
            PRESET,
            {
                "client_id": "sandbox-client",
                "client_secret": "sandbox-secret",
                "refresh_token": "sandbox-refresh-token",
                "base_url": where["base"],
            },
        )

        async def process() -> list[oc.Outcome]:
            async with engine:  # noqa: F821 - deleted below on purpose
                return [await engine.process(event, i) for i, event in enumerate([lead(1), {"type": "page"}, lead(2)])]  # noqa: F821 - deleted below on purpose

        outcomes = in_thread(lambda: asyncio.run(process()))
    finally:
        stop.set()
        server.join(30)
    assert [o.outcome for o in outcomes] == [oc.DELIVERED, oc.DROPPED, oc.DELIVERED]
    assert outcomes[0].request is not None and outcomes[0].request["body"]["data"]["attributes"]["name"] == "Jane Doe1"
    del engine
    gc.collect()
    assert unraisable == []
