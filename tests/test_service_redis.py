"""Scaled out on Redis: one intake, three workers (one killed with kill -9 mid-run), the Outreach sandbox.

Every process here is a real ``signal-engine``; Redis is a real
redis-server. What is promised and checked on what the sandbox saw:
every lead created exactly once, one token mint for all workers, no 429 a
shared budget would have avoided, an identify joined with its lead whichever
workers took them, and exactly one published outcome per event.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from service_helpers import (
    SIGNING_SECRET,
    WRITE_KEY,
    Service,
    identify,
    lead,
    page,
    post,
    post_signed,
    until,
    write_key_headers,
)
from test_delivery_sandbox import ThreadedSandbox, fast_preset, unique_credentials, write_settings

PRESET = "outreach/lead-capture"
INTEGRATION = "lead-capture-fast"  # serve PRESET is one integration named after it: here the preset file's stem
LEADS = 300
CHUNK = 25


def outcomes(url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(fields[b"outcome"]) for _, fields in client.xrange(f"signal:{INTEGRATION}:outcomes")]
    finally:
        client.close()


def pending_of(url: str, consumer: str) -> int:
    """Entries of the stream that ``consumer`` has read and not acknowledged (XPENDING)."""
    client = redis.Redis.from_url(url)
    try:
        summary = client.xpending(f"signal:{PRESET}:events", INTEGRATION)  # one group per integration
        return sum(int(c["pending"]) for c in summary["consumers"] if c["name"] in (consumer, consumer.encode()))
    finally:
        client.close()


def kill_while_holding(worker: Service, consumer: str, url: str, timeout: float = 30) -> int:
    """SIGKILL ``worker`` at a moment it provably holds unacknowledged entries; how many it held.

    Frozen (SIGSTOP, and seen stopped in /proc) it can acknowledge nothing
    more, so what XPENDING says it owns then is exactly what it leaves behind.
    The count is read twice: an acknowledgement written just before the stop
    is in Redis's socket buffer, handled at the latest in the event loop turn
    that answers the first read, so the second read sees it.
    """
    deadline = time.monotonic() + timeout
    while True:
        worker.signal(signal.SIGSTOP)
        until(lambda: _proc_state(worker.proc.pid) == "T", timeout=10, what=f"{consumer} to stop")
        pending_of(url, consumer)
        held = pending_of(url, consumer)
        if held:
            worker.signal(signal.SIGKILL)
            worker.wait(10)
            return held
        worker.signal(signal.SIGCONT)
        assert time.monotonic() < deadline, f"{consumer} never held an unacknowledged entry"
        time.sleep(0.02)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rpartition(")")[2].split()[0]


def test_three_workers_one_killed_deliver_every_lead_once_with_one_mint_and_no_quota_overrun(
    tmp_path: Path, redis_url: str
) -> None:
    creds = unique_credentials()
    # A quota far below what three workers would spend on their own: 120 requests per 1.5 s window.
    with ThreadedSandbox(quota=120, window=1.5, mint_limit=1, mint_window=60, **creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        serve = Service(
            "serve",
            preset,
            "--settings",
            settings,
            "--redis",
            redis_url,
            "--port",
            "0",
            "--quiet",
            cwd=tmp_path,
            name="serve",
        )
        workers = [
            Service(
                "worker",
                preset,
                "--settings",
                settings,
                "--redis",
                redis_url,
                "--consumer",
                f"w{n}",
                "--visibility-timeout",
                "2",
                "--metrics-port",
                "0",
                cwd=tmp_path,
                name=f"w{n}",
            )
            for n in range(3)
        ]
        try:
            url = serve.url
            for w in workers:
                w.wait_for_notice(r"^worker w\d consuming")
            total = 0
            for start in range(0, LEADS, CHUNK):
                ids = range(start, start + CHUNK)
                killing = start == LEADS // 3
                if killing:
                    # Mid-run: one worker dies without a chance to acknowledge what it holds. Slow answers,
                    # queued before this chunk is posted, keep its deliveries (and so its entries) open for a
                    # while; it is killed only once it provably holds entries, so there is something for the
                    # others to take over.
                    until(lambda: len(workers[0].outcomes()) > 20, what="worker w0 to be busy")
                    sandbox.admin("POST", "faults", {"faults": ["delay:1"] * 16})
                # Identifies through the Segment route (gzip, as SDKs may send), answered before their leads are posted.
                status, _ = post(
                    url,
                    "/v1/batch",
                    {"batch": [identify(i) for i in ids] + [page(i) for i in ids]},
                    write_key_headers(),
                    compress=start % 2 == 0,
                )
                assert status == 200
                # Leads through the signed API, and a few through Segment's single-event route.
                status, _ = post_signed(url, {"batch": [lead(i) for i in ids if i % 10]})
                assert status == 200
                for i in ids:
                    if i % 10 == 0:
                        single = {k: v for k, v in lead(i).items() if k != "type"}
                        assert post(url, "/v1/track", single, write_key_headers())[0] == 200
                total += 3 * CHUNK
                if killing:
                    held = kill_while_holding(workers[0], "w0", redis_url)
                    sandbox.admin("POST", "faults", {"faults": [], "clear": True})
            until(lambda: len(outcomes(redis_url)) >= total, timeout=90, what="every event's outcome")
            scraped = [
                urllib.request.urlopen(w.wait_for_notice(r"^metrics on (http://\S+)$").group(1), timeout=10)
                .read()
                .decode()
                for w in workers[1:]
            ]
            for w in workers[1:]:
                w.signal(signal.SIGTERM)
            codes = [w.wait(30) for w in workers[1:]]
            serve.signal(signal.SIGTERM)
            assert serve.wait(30) == 0
            # Every process has exited: a second outcome for an event could only have been published by now.
            published = outcomes(redis_url)
            state = sandbox.admin("GET", "state")
        finally:
            for process in [serve, *workers]:
                process.stop()

    # Exactly one outcome per event, for every event posted.
    per_event = Counter(o["messageId"] for o in published)
    assert len(published) == total and set(per_event.values()) == {1}, per_event.most_common(3)
    by_id = {o["messageId"]: o for o in published}
    # Every lead delivered, joined with its identify (the email came from the identify alone).
    assert all(by_id[f"svc-lead-{i}"]["outcome"] == "delivered" for i in range(LEADS))
    assert all(by_id[f"svc-id-{i}"]["reason"] == "event_not_mapped" for i in range(LEADS))
    assert all(by_id[f"svc-page-{i}"]["reason"] == "event_not_mapped" for i in range(LEADS))
    # ...whichever worker took them: plenty of identifies were finished by another worker than their lead.
    crossed = sum(by_id[f"svc-id-{i}"]["worker"] != by_id[f"svc-lead-{i}"]["worker"] for i in range(LEADS))
    assert crossed > LEADS // 10
    # Each lead created exactly once.
    emails = Counter(e for p in state["prospects"] for e in p["attributes"]["emails"])
    assert len(state["prospects"]) == LEADS and set(emails.values()) == {1}
    assert emails.keys() == {f"svc{i}@service.test" for i in range(LEADS)}
    assert state["creates"] == LEADS
    # A create on the wire when w0 died is sent again and merged (422, then the upsert): never more than w0 held.
    assert state["requests_by_status"].get("422", 0) <= 8
    # One mint for all workers, and not one 429: they spent one shared budget.
    assert state["mints"] == 1
    assert "429" not in state["requests_by_status"], state["requests_by_status"]
    assert all(used <= 120 for _, _, used in state["rate_limit"]["windows"])
    # Each worker's /metrics: its outcomes, no 429, an empty backlog once done.
    for text in scraped:
        assert f'signal_outcomes_total{{integration="{INTEGRATION}",outcome="delivered",reason="none"}}' in text
        assert f'signal_destination_429_total{{integration="{INTEGRATION}"}} 0.0' in text
        assert f'signal_integration_lag_events{{integration="{INTEGRATION}"}} 0.0' in text
        assert "signal_token_refreshes_total" in text and "signal_delivery_latency_seconds_count" in text
    # The entries w0 held were taken over by the others; they drained and exited cleanly.
    assert held > 0
    taken = [int(n) for w in workers[1:] for n in re.findall(r"took over (\d+) event", w.stderr())]
    assert sum(taken) >= held, (held, taken)
    assert codes == [0, 0]
    assert {o["worker"] for o in published} == {"w0", "w1", "w2"}
    for process in [serve, *workers]:
        text = process.stderr() + "\n".join(process.lines)
        for secret in (creds["client_secret"], creds["refresh_token"], WRITE_KEY, SIGNING_SECRET, *sandbox.issued):
            assert secret not in text


def test_without_a_shared_budget_three_workers_overrun_the_quota(tmp_path: Path, redis_url: str) -> None:
    """The control: the same Redis state but a rate budget per worker collects 429s, so the test above can fail."""
    import asyncio

    from engine.runtime import Engine
    from engine.state.redis import RedisState

    class BudgetPerWorker(RedisState):
        rate_budget = None  # type: ignore[assignment]

    creds = unique_credentials()
    with ThreadedSandbox(quota=30, window=1.5, mint_limit=1, mint_window=60, **creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = {**creds, "base_url": sandbox.base_url}

        async def feed(n: int) -> None:
            events = [e for i in range(20) for e in (identify(i, f"e{n}"), lead(i, f"e{n}"))]
            async with Engine.from_preset(str(preset), settings, state=BudgetPerWorker(redis_url)) as engine:
                async for _ in engine.process_many(events):
                    pass

        async def main() -> None:
            await asyncio.gather(*(feed(n) for n in range(3)))

        asyncio.run(asyncio.wait_for(main(), 60))
        state = sandbox.admin("GET", "state")
    assert state["mints"] == 1  # the tokens are still shared
    assert state["requests_by_status"].get("429", 0) > 0


def test_dlq_list_and_replay_take_redis_and_tail_prints_the_outcomes(tmp_path: Path, redis_url: str) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        sandbox.admin("POST", "faults", {"faults": [503] * 5})  # the first lead's five attempts
        serve = Service(
            "serve",
            preset,
            "--settings",
            settings,
            "--redis",
            redis_url,
            "--port",
            "0",
            "--quiet",
            cwd=tmp_path,
            name="serve",
        )
        worker = Service(
            "worker",
            preset,
            "--settings",
            settings,
            "--redis",
            redis_url,
            "--consumer",
            "solo",
            cwd=tmp_path,
            name="solo",
        )
        try:
            url = serve.url
            assert post(url, "/v1/batch", {"batch": [identify(1, "d"), lead(1, "d")]}, write_key_headers())[0] == 200
            until(lambda: len(outcomes(redis_url)) == 2, what="two outcomes")
            worker.signal(signal.SIGTERM)
            assert worker.wait(30) == 0
        finally:
            serve.stop()
            worker.stop()
        assert [o["outcome"] for o in outcomes(redis_url)] == ["dropped", "dead_lettered"]
        listed = _cli(tmp_path, "dlq", "list", preset, "--redis", redis_url)
        assert listed.returncode == 0 and "1 dead letter(s)" in listed.stderr
        assert json.loads(listed.stdout)["messageId"] == "d-lead-1"
        replayed = _cli(tmp_path, "dlq", "replay", preset, "--settings", settings, "--redis", redis_url)
        assert replayed.returncode == 0, replayed.stderr
        assert "delivered 1, 0 left" in replayed.stderr
        assert [p["attributes"]["emails"] for p in sandbox.admin("GET", "state")["prospects"]] == [["d1@service.test"]]
        tail = _cli(tmp_path, "tail", preset, "--redis", redis_url, "-n", "1", "--no-follow")
        assert tail.returncode == 0
        assert [json.loads(line)["messageId"] for line in tail.stdout.splitlines()] == ["d-lead-1"]


def test_an_unreachable_redis_is_a_one_line_usage_error(tmp_path: Path) -> None:
    for args in (
        ["serve", PRESET, "--redis", "redis://:pw-secret-99@127.0.0.1:1/0", "--port", "0"],
        ["worker", PRESET, "--settings", str(tmp_path / "s.yaml"), "--redis", "redis://127.0.0.1:1/0"],
        ["tail", PRESET, "--redis", "redis://127.0.0.1:1/0", "--no-follow"],
    ):
        (tmp_path / "s.yaml").write_text("client_id: c\nclient_secret: s-abcdef\nrefresh_token: r-abcdef\n")
        result = _cli(tmp_path, *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot connect" in lines[0] and "pw-secret-99" not in lines[0], lines


def _cli(cwd: Path, *args: Any) -> Any:
    import os
    import subprocess
    import sys

    from service_helpers import SERVICE_ENV

    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **SERVICE_ENV},
    )
