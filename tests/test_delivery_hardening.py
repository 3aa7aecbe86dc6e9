"""Delivery under the failures a production host meets: cancellation, shared state,
failing callbacks and stores, redirects, replays to another origin, live streams.

Each test talks real HTTP on loopback, to the Outreach sandbox or to a tiny
purpose-built server when the sandbox cannot misbehave in the needed way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.language.settings import resolve
from engine.outcome import Outcome
from engine.pipeline.prepare import Pipeline
from engine.runtime import Engine
from engine.sandbox.outreach import SandboxConfig, start_sandbox
from engine.state.dead_letters import MemoryDeadLetters
from engine.state.sqlite import SqliteState

CLIENT_SECRET = "hardening-client-secret"
REFRESH = "hardening-refresh-token-0"


def settings(base_url: str) -> dict[str, Any]:
    return {"client_id": "cid", "client_secret": CLIENT_SECRET, "refresh_token": REFRESH, "base_url": base_url}


def lead(n: int, **traits: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Lead Submitted",
        "userId": f"u{n}",
        "messageId": f"m{n}",
        "traits": {"email": f"lead{n}@acme.com", **traits},
        "context": {"consent": {"canonical": {"marketing": True}}},
    }


async def sandbox(**config: Any) -> tuple[web.AppRunner, str]:
    return await start_sandbox(
        SandboxConfig(client_id="cid", client_secret=CLIENT_SECRET, refresh_token=REFRESH, **config), port=0
    )


async def sandbox_state(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/_sandbox/state") as resp:
            return await resp.json()


async def tiny_server(routes: list[web.RouteDef]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_a_host_cancelling_mid_refresh_does_not_lose_the_rotated_token(tmp_path: Path) -> None:
    """The token endpoint rotates while the caller is cancelled: the new token must still be saved."""
    issued: list[str] = []

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        expected = issued[-1] if issued else REFRESH
        if form.get("refresh_token") != expected:
            return web.json_response({"error": "invalid_grant"}, status=400)
        await asyncio.sleep(0.3)  # the host gives up before this answer arrives
        issued.append(f"rotated-refresh-{len(issued) + 1}")
        return web.json_response(
            {"access_token": f"access-{len(issued)}", "expires_in": 7200, "refresh_token": issued[-1]}
        )

    async def create(request: web.Request) -> web.Response:
        return web.json_response({"data": {"type": "prospect", "id": 1}}, status=201)

    async def scenario() -> tuple[Outcome, int]:
        runner, base = await tiny_server([web.post("/oauth/token", token), web.post("/api/v2/prospects", create)])
        try:
            async with Engine.from_preset("outreach/lead-capture", settings(base), state=tmp_path) as engine:
                try:
                    await asyncio.wait_for(engine.process(lead(1)), 0.1)
                except TimeoutError:
                    pass
                second = await engine.process(lead(2))
            return second, len(issued)
        finally:
            await runner.cleanup()

    second, mints = asyncio.run(scenario())
    assert second.outcome == oc.DELIVERED
    assert mints == 1  # the cancelled refresh completed and its token was reused
    stored = SqliteState(tmp_path).tokens("cid").load(REFRESH)
    assert stored is not None and stored.refresh_token == "rotated-refresh-1"


def test_two_engines_sharing_a_state_directory_share_one_token_chain(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], dict[str, Any]]:
        runner, base = await sandbox()
        try:
            first = Engine.from_preset("outreach/lead-capture", settings(base), state=tmp_path)
            second = Engine.from_preset("outreach/lead-capture", settings(base), state=tmp_path)  # read the store early
            async with first, second:
                a = await first.process(lead(1))
                b = await second.process(lead(2))  # its configured token was rotated away by `first`
            return [a.outcome, b.outcome], await sandbox_state(base)
        finally:
            await runner.cleanup()

    outcomes, state = asyncio.run(scenario())
    assert outcomes == [oc.DELIVERED, oc.DELIVERED]
    assert state["mints"] == 1
    assert 400 not in state["token_statuses"]


def test_a_failing_outcome_callback_loses_no_outcome() -> None:
    seen: list[int | None] = []

    def callback(result: Outcome) -> None:
        seen.append(result.index)
        if result.index == 1:
            raise RuntimeError("host bug")

    async def scenario() -> list[str]:
        runner, base = await sandbox()
        try:
            async with Engine.from_preset(
                "outreach/lead-capture", settings(base), on_outcome=callback, dead_letters=MemoryDeadLetters()
            ) as engine:
                return [o.outcome async for o in engine.process_many([lead(i) for i in range(4)])]
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == [oc.DELIVERED] * 4
    assert sorted(i for i in seen if i is not None) == [0, 1, 2, 3]


def test_an_async_outcome_callback_is_awaited() -> None:
    seen: list[int | None] = []

    async def callback(result: Outcome) -> None:
        await asyncio.sleep(0)
        seen.append(result.index)

    async def scenario() -> None:
        async with Engine.from_preset(
            "outreach/lead-capture", settings("http://127.0.0.1:9"), on_outcome=callback
        ) as engine:
            await engine.process({"type": "page"}, 7)

    asyncio.run(scenario())
    assert seen == [7]


class BrokenStore(MemoryDeadLetters):
    def add(self, entry: dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")


def test_a_dead_letter_store_that_cannot_be_written_still_gives_an_outcome_and_keeps_the_letter() -> None:
    async def scenario() -> tuple[Outcome, list[dict[str, Any]]]:
        runner, base = await sandbox(faults=[500] * 5)
        try:
            async with Engine.from_preset(
                "outreach/lead-capture", settings(base), dead_letters=BrokenStore(), sleep=_no_wait
            ) as engine:
                result = await engine.process(lead(1))
                return result, engine.dead_letters.entries()
        finally:
            await runner.cleanup()

    result, letters = asyncio.run(scenario())
    assert result.outcome == oc.DEAD_LETTERED
    assert "kept in memory" in (result.detail or "")
    assert [letter["messageId"] for letter in letters] == ["m1"]  # still listed, waiting for the store


async def _no_wait(_: float) -> None:
    await asyncio.sleep(0)


def test_a_redirect_is_not_followed_and_is_not_a_delivery() -> None:
    calls: list[str] = []

    async def token(request: web.Request) -> web.Response:
        calls.append("token")
        return web.json_response({"access_token": "access-x", "expires_in": 7200, "refresh_token": "r2"})

    async def create(request: web.Request) -> web.Response:
        calls.append("create")
        raise web.HTTPMovedPermanently("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        calls.append("elsewhere")
        return web.json_response({"data": []})

    async def scenario() -> Outcome:
        runner, base = await tiny_server(
            [
                web.post("/oauth/token", token),
                web.post("/api/v2/prospects", create),
                web.get("/elsewhere", elsewhere),
                web.post("/elsewhere", elsewhere),
            ]
        )
        try:
            async with Engine.from_preset("outreach/lead-capture", settings(base)) as engine:
                return await engine.process(lead(1))
        finally:
            await runner.cleanup()

    result = asyncio.run(scenario())
    assert result.outcome == oc.FAILED
    assert result.cause == "http_301"
    assert calls == ["token", "create"]


def test_replay_sends_no_credential_to_an_origin_other_than_the_settings(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Outcome], int]:
        runner, base = await sandbox()
        try:
            store = MemoryDeadLetters()
            store.add(
                {
                    "id": "x1",
                    "preset": "outreach/lead-capture",
                    "action": "create_prospect",
                    "index": 0,
                    "messageId": "m0",
                    "request": {
                        "method": "POST",
                        "url": "http://127.0.0.2:9/api/v2/prospects",
                        "headers": {},
                        "body": {"data": {}},
                    },
                }
            )
            async with Engine.from_preset("outreach/lead-capture", settings(base), dead_letters=store) as engine:
                results = await engine.replay_dead_letters()
            return results, len(store.entries())
        finally:
            await runner.cleanup()

    results, left = asyncio.run(scenario())
    assert [r.cause for r in results] == ["not_replayable"]
    assert "127.0.0.2:9" in (results[0].detail or "")
    assert left == 1


def test_process_many_yields_an_outcome_before_the_next_event_arrives() -> None:
    async def scenario() -> bool:
        gate = asyncio.Event()
        runner, base = await sandbox()

        async def events() -> AsyncIterator[dict[str, Any]]:
            yield lead(1)
            await gate.wait()  # a quiet queue: the next message is a long time coming
            yield lead(2)

        try:
            async with Engine.from_preset("outreach/lead-capture", settings(base)) as engine:
                stream = engine.process_many(events())
                first = await asyncio.wait_for(stream.__anext__(), 5)
                gate.set()
                rest = [o async for o in stream]
            return first.outcome == oc.DELIVERED and [o.outcome for o in rest] == [oc.DELIVERED]
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario())


def test_upsert_keeps_the_existing_phone_numbers() -> None:
    async def scenario() -> list[str]:
        runner, base = await sandbox()
        try:
            async with Engine.from_preset("outreach/lead-capture", settings(base)) as engine:
                await engine.process(lead(1, phone="+1 415 555 0100"))
                await engine.process({**lead(1, phone="+44 7700 900123"), "messageId": "m1-later"})
            state = await sandbox_state(base)
            [prospect] = state["prospects"]
            return prospect["attributes"]["mobilePhones"]
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()) == ["+14155550100", "+447700900123"]


def test_a_null_or_blank_trait_does_not_erase_a_remembered_one() -> None:
    preset = load_preset("outreach/lead-capture")
    pipeline = Pipeline(preset, resolve(preset.settings, {}, require=False))
    pipeline.dry_run(
        {"type": "identify", "userId": "u1", "traits": {"email": "jane@acme.com", "phone": "+447700900123"}}
    )
    result = pipeline.dry_run(
        {
            "type": "track",
            "event": "Signed Up",
            "userId": "u1",
            "traits": {"email": None, "phone": "  "},
            "context": {"consent": {"canonical": {"marketing": True}}},
        }
    )
    assert result.outcome == oc.WOULD_SEND
    attributes = result.request["body"]["data"]["attributes"]  # type: ignore[index]
    assert attributes["emails"] == ["jane@acme.com"]
    assert attributes["mobilePhones"] == ["+447700900123"]


def test_an_unexpected_error_inside_prepare_is_an_outcome_not_a_crash() -> None:
    preset = load_preset("outreach/lead-capture")
    pipeline = Pipeline(preset, resolve(preset.settings, {}, require=False))
    result = pipeline.dry_run(
        {
            "type": "track",
            "event": "Signed Up",
            "userId": "u1",
            "traits": {"email": "a@b.co", "company": 10**5000},
            "context": {"consent": {"canonical": {"marketing": True}}},
        },
        3,
    )
    assert (result.index, result.outcome, result.cause) == (3, oc.FAILED, "internal_error")
