"""The local Meta Conversions API fake behaves as docs/vendors/meta.md says Meta does, and the
meta/conversions preset delivers through it end to end (batched, hashed, each event once)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from engine import outcome as oc
from engine.sandbox import meta
from sandbox_helpers import Running, running
from test_vendor_presets import REPO, _cli, _SandboxThread

TOKEN = "sandbox-capi-token"
EVENTS = f"/v24.0/1234567890/events?access_token={TOKEN}"
UA = "Mozilla/5.0 (X11; Linux x86_64)"
# Digests computed outside the engine: printf '%s' 'jane.doe@acme.com' | sha256sum
JANE_EM = "7ab2023f5a756bb26da296ceaf20cee2f320d806cbedfcc5cf614b1b3f409a52"


def event(event_id: str = "e-1", **changes: Any) -> dict[str, Any]:
    base = {
        "event_name": "Lead",
        "event_time": int(time.time()) - 60,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://www.example-saas.com/demo",
        "user_data": {"em": [JANE_EM], "client_user_agent": UA},
    }
    return {**base, **changes}


def run(coro: Any) -> None:
    asyncio.run(coro)


async def post(sb: Running, body: Any, path: str = EVENTS) -> tuple[int, Any]:
    status, answer, _ = await sb.call("POST", path, json_body=body)
    return status, answer


def test_accepts_a_batch_and_answers_events_received() -> None:
    async def scenario() -> None:
        async with running(meta) as sb:
            status, body = await post(sb, {"data": [event("a"), event("b")]})
            assert status == 200 and body["events_received"] == 2 and body["messages"] == []
            assert isinstance(body["fbtrace_id"], str) and body["fbtrace_id"]
            assert [e["event_id"] for e in sb.state.events] == ["a", "b"]

    run(scenario())


def test_a_wrong_token_is_oauth_exception_190_with_http_400() -> None:
    async def scenario() -> None:
        async with running(meta) as sb:
            status, body = await post(sb, {"data": [event()]}, "/v24.0/1234567890/events?access_token=nope")
            assert status == 400
            assert (body["error"]["type"], body["error"]["code"]) == ("OAuthException", 190)
            assert set(body["error"]) >= {"message", "type", "code", "fbtrace_id"}
            status, body = await post(sb, {"data": [event()]}, "/v24.0/1234567890/events")
            assert (status, body["error"]["code"]) == (400, 104)
            assert sb.state.events == []

    run(scenario())


def test_an_unhashed_email_refuses_the_whole_request() -> None:
    async def scenario() -> None:
        async with running(meta) as sb:
            bad = event("b", user_data={"em": ["jane.doe@acme.com"], "client_user_agent": UA})
            status, body = await post(sb, {"data": [event("a"), bad]})
            assert status == 400 and body["error"]["code"] == 100
            assert "user_data.em" in body["error"]["error_user_msg"] and "event 1" in body["error"]["error_user_msg"]
            assert sb.state.events == []  # the valid one is refused with it
            upper = event("c", user_data={"em": [JANE_EM.upper()], "client_user_agent": UA})
            assert (await post(sb, {"data": [upper]}))[0] == 400

    run(scenario())


def test_more_than_1000_events_are_refused_and_1000_accepted() -> None:
    async def scenario() -> None:
        async with running(meta) as sb:
            status, body = await post(sb, {"data": [event(str(i)) for i in range(1001)]})
            assert status == 400 and body["error"]["code"] == 100 and "1000" in body["error"]["message"]
            status, body = await post(sb, {"data": [event(str(i)) for i in range(1000)]})
            assert (status, body["events_received"]) == (200, 1000)

    run(scenario())


def test_website_events_need_their_source_and_a_recent_time() -> None:
    async def scenario() -> None:
        async with running(meta) as sb:
            no_agent = event(user_data={"em": [JANE_EM]})
            old = event(event_time=int(time.time()) - 8 * 86400)
            no_url = {k: v for k, v in event().items() if k != "event_source_url"}
            for bad in (no_agent, old, no_url, event(action_source="web"), event(event_time="now")):
                status, body = await post(sb, {"data": [bad]})
                assert (status, body["error"]["code"]) == (400, 100), bad
        async with running(meta, event_window_days=0) as sb:
            assert (await post(sb, {"data": [event(event_time=1715678042)]}))[0] == 200

    run(scenario())


def test_a_repeated_event_id_is_counted_once_and_test_events_are_kept_apart() -> None:
    async def scenario() -> None:
        async with running(meta) as sb:
            assert (await post(sb, {"data": [event("same")]}))[1]["events_received"] == 1
            assert (await post(sb, {"data": [event("same")]}))[1]["events_received"] == 1
            assert len(sb.state.events) == 1 and sb.state.duplicates == 1
            assert (await post(sb, {"data": [event("other")], "test_event_code": "TEST123"}))[0] == 200
            assert [e["event_id"] for e in sb.state.test_events] == ["other"] and len(sb.state.events) == 1

    run(scenario())


def test_an_unknown_pixel_and_the_form_encoding() -> None:
    async def scenario() -> None:
        async with running(meta) as sb:
            status, body = await post(sb, {"data": [event()]}, f"/v24.0/999/events?access_token={TOKEN}")
            assert (status, body["error"]["code"], body["error"]["error_subcode"]) == (400, 100, 33)
            status, body, _ = await sb.call(
                "POST", "/v24.0/1234567890/events", form={"access_token": TOKEN, "data": json.dumps([event("f")])}
            )
            assert (status, body["events_received"]) == (200, 1)
            assert all("access_token" not in r["query"] or "***" in r["query"] for r in sb.state.requests)

    run(scenario())


# --------------------------------------------------------------------------
# the preset, end to end through the CLI
# --------------------------------------------------------------------------


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_example_stream_is_delivered_batched_and_hashed_each_event_once(tmp_path: Path) -> None:
    with _SandboxThread(meta, event_window_days=0) as sandbox:
        settings = tmp_path / "settings.yaml"
        settings.write_text(
            f"pixel_id: '1234567890'\naccess_token: {TOKEN}\nbase_url: {sandbox.base}\n", encoding="utf-8"
        )
        first = _cli(
            "run",
            "meta/conversions",
            "--settings",
            settings,
            "--events",
            REPO / "examples" / "lead-capture.ndjson",
            "--state",
            tmp_path / "state",
        )
        assert first.returncode == 0, first.stderr
        delivered = [json.loads(line) for line in first.stdout.splitlines()]
        delivered = [o for o in delivered if o["outcome"] == oc.DELIVERED]
        assert [o["messageId"] for o in delivered] == ["msg-005", "msg-007", "msg-009", "msg-010", "msg-013"]
        assert {o["detail"] for o in delivered} == {"delivered in a request of 5 item(s)"}
        assert sandbox.read(lambda s: s.batch_sizes) == [5]
        kept = sandbox.read(lambda s: {e["event_id"]: e for e in s.events})
        assert kept["msg-005"]["user_data"]["em"] == [JANE_EM]
        assert kept["msg-005"]["user_data"]["ph"] == [_sha256("447700900123")]
        assert kept["msg-005"]["event_name"] == "Lead" and kept["msg-010"]["event_name"] == "CompleteRegistration"
        assert TOKEN not in first.stdout + first.stderr


def test_a_wrong_token_dead_letters_and_a_replay_after_the_fix_delivers_each_event_once(tmp_path: Path) -> None:
    with _SandboxThread(meta, event_window_days=0) as sandbox:
        settings = tmp_path / "settings.yaml"
        settings.write_text(
            f"pixel_id: '1234567890'\naccess_token: wrong-{TOKEN}\nbase_url: {sandbox.base}\n", encoding="utf-8"
        )
        state = tmp_path / "state"
        events = REPO / "examples" / "lead-capture.ndjson"
        failed = _cli("run", "meta/conversions", "--settings", settings, "--events", events, "--state", state)
        assert failed.returncode == 1, failed.stderr
        letters = [o for o in map(json.loads, failed.stdout.splitlines()) if o["outcome"] == oc.DEAD_LETTERED]
        assert len(letters) == 5 and all("access_token setting" in o["detail"] for o in letters)
        assert f"wrong-{TOKEN}" not in failed.stdout + failed.stderr
        assert sandbox.read(lambda s: s.events) == []

        settings.write_text(
            f"pixel_id: '1234567890'\naccess_token: {TOKEN}\nbase_url: {sandbox.base}\n", encoding="utf-8"
        )
        replay = _cli("dlq", "replay", "meta/conversions", "--settings", settings, "--state", state)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert [o["outcome"] for o in map(json.loads, replay.stdout.splitlines())] == [oc.DELIVERED] * 5
        again = _cli("dlq", "replay", "meta/conversions", "--settings", settings, "--state", state)
        assert again.returncode == 0 and again.stdout == ""
        ids = sandbox.read(lambda s: [e["event_id"] for e in s.events])
        assert sorted(ids) == ["msg-005", "msg-007", "msg-009", "msg-010", "msg-013"]
        assert sandbox.read(lambda s: s.duplicates) == 0  # each event sent once
