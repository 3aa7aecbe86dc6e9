"""The embedded service: ``serve PRESET --settings FILE``, intake and delivery in one process, nothing else.

A real Segment SDK and a signed client post to it; a kill -9 mid-run and a
restart lose nothing that was answered 200; SIGTERM drains.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from service_helpers import (
    SIGNING_SECRET,
    WRITE_KEY,
    Service,
    identify,
    lead,
    post,
    post_signed,
    queue_leases,
    queue_writes_held,
    until,
    write_key_headers,
)
from test_delivery_sandbox import ThreadedSandbox, fast_preset, unique_credentials, write_settings


def delivered(services: list[Service]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for service in services:
        for o in service.outcomes():
            if o["outcome"] == "delivered":
                counts[o["messageId"]] = counts.get(o["messageId"], 0) + 1
    return counts


def test_a_segment_sdk_and_a_signed_client_get_their_leads_delivered(tmp_path: Path) -> None:
    analytics = pytest.importorskip("segment.analytics", reason="segment-analytics-python is a test dependency")
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        serve = Service(
            "serve",
            preset,
            "--settings",
            settings,
            "--state",
            tmp_path / "state",
            "--port",
            "0",
            cwd=tmp_path,
            name="serve",
        )
        try:
            url = serve.url
            errors: list[Any] = []
            client = analytics.Client(
                WRITE_KEY,
                host=url,
                gzip=True,
                sync_mode=True,
                max_retries=1,
                on_error=lambda error, batch: errors.append(error),
            )
            consent = {"consent": {"canonical": {"marketing": True}}}
            client.identify(
                "sdk-user",
                {"email": "Sdk.User@Example.com", "firstName": "Sdk", "lastName": "User"},
                context=consent,
                message_id="sdk-identify",
            )
            client.track("sdk-user", "Demo Requested", {"plan": "pro"}, context=consent, message_id="sdk-lead")
            client.page(anonymous_id="anon-1", name="Pricing", message_id="sdk-page")
            client.flush()
            assert errors == []
            assert post_signed(url, lead(1, "signed") | {"traits": {"email": "signed@example.com"}})[0] == 200
            until(lambda: len(serve.outcomes()) == 4, what="four outcomes")
            serve.signal(signal.SIGTERM)
            assert serve.wait(30) == 0
        finally:
            serve.stop()
        outcomes = {o["messageId"]: o for o in serve.outcomes()}
        assert outcomes["sdk-identify"]["reason"] == "event_not_mapped"
        assert outcomes["sdk-page"]["reason"] == "event_not_mapped"
        assert outcomes["sdk-lead"]["outcome"] == "delivered"
        assert outcomes["signed-lead-1"]["outcome"] == "delivered"
        prospects = sandbox.admin("GET", "state")["prospects"]
        assert sorted(p["attributes"]["emails"][0] for p in prospects) == ["sdk.user@example.com", "signed@example.com"]
        sdk = next(p for p in prospects if p["attributes"]["emails"] == ["sdk.user@example.com"])
        assert sdk["attributes"]["name"] == "Sdk User" and sdk["attributes"]["tags"] == ["Signal", "demo-request"]
        text = serve.stderr() + "\n".join(serve.lines)
        for secret in (creds["client_secret"], creds["refresh_token"], WRITE_KEY, SIGNING_SECRET, *sandbox.issued):
            assert secret not in text


def test_a_restart_after_kill_9_loses_nothing_that_was_answered_200(tmp_path: Path) -> None:
    creds = unique_credentials()
    count = 100
    # Slow first answers, so that the queue's lock is taken with leased events still on the wire.
    with ThreadedSandbox(faults=["delay:0.5"] * 12, **creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        args = ("serve", preset, "--settings", settings, "--state", tmp_path / "state", "--port", "0")
        first = Service(*args, cwd=tmp_path, name="first")
        second = None
        try:
            url = first.url
            for start in range(0, count, 25):  # more than the service leases at once
                batch = [e for i in range(start, start + 25) for e in (identify(i, "k"), lead(i, "k"))]
                status, _ = post(url, "/v1/batch", {"batch": batch}, write_key_headers())
                assert status == 200
            until(lambda: queue_leases(tmp_path / "state") > 0, what="the service leasing events")
            # Kill it with leads delivered and printed but not acknowledged: their acknowledgement waits
            # behind the queue's write lock, while what was leased goes on being delivered.
            with queue_writes_held(tmp_path / "state"):
                held_at = set(delivered([first]))
                until(
                    lambda: len([m for m in delivered([first]) if m not in held_at and "lead" in m]) >= 2,
                    what="leads delivered while their acknowledgement waits",
                )
                first.signal(signal.SIGKILL)
                first.wait(10)
            done_before = delivered([first])
            unacked = {m for m in done_before if m not in held_at and "lead" in m}
            assert len(done_before) < count, "the kill came too late to test anything"
            second = Service(*args, cwd=tmp_path, name="second")
            second.url  # noqa: B018 - waits until it listens
            until(
                lambda: len(delivered([first, second])) == count,
                timeout=60,
                what=lambda: (
                    "every lead delivered; the others: "
                    + json.dumps(
                        [
                            o
                            for o in first.outcomes() + second.outcomes()
                            if o["outcome"] != "delivered" and o["messageId"].startswith("k-lead")
                        ]
                    )
                    + "; second stderr: "
                    + second.stderr()[-2000:]
                ),
            )
            second.signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            first.stop()
            if second is not None:
                second.stop()
        state = sandbox.admin("GET", "state")
    # Every lead exactly once in the destination; at most the few on the wire at the kill were sent twice and merged.
    emails = sorted(e for p in state["prospects"] for e in p["attributes"]["emails"])
    assert emails == sorted(f"k{i}@service.test" for i in range(count))
    assert state["creates"] == count
    # The restart re-read only what was not acknowledged. A line is printed just before its entry is
    # acknowledged, and the outcomes that finish during one acknowledgement go together in the next: the
    # events with a line from both are those whose acknowledgement the kill cut, and a lead's second line
    # is the journal's "already delivered", sent nothing (the creates above count each lead once).
    first_ids = {o["messageId"] for o in first.outcomes()}
    twice = first_ids & {o["messageId"] for o in second.outcomes()}
    assert len(twice) < len(first_ids), twice  # the first's acknowledged lines were not read again
    assert all(o["attempts"] == 0 for o in second.outcomes() if o["messageId"] in twice and o["outcome"] == "delivered")
    # The leads delivered but never acknowledged were read again, and the journal sent none of them twice.
    again = {o["messageId"]: o for o in second.outcomes() if o["messageId"] in unacked}
    assert set(again) == unacked, unacked - set(again)
    assert all(o["outcome"] == "delivered" and o["attempts"] == 0 for o in again.values()), again
    assert {o["messageId"] for o in first.outcomes() + second.outcomes()} >= {f"k-lead-{i}" for i in range(count)}


def test_sigterm_drains_what_was_read_and_keeps_the_rest_for_the_next_start(tmp_path: Path) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(faults=["delay:0.3"] * 3, **creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        args = ("serve", preset, "--settings", settings, "--state", tmp_path / "state", "--port", "0")
        first = Service(*args, cwd=tmp_path, name="first")
        try:
            url = first.url
            events = [e for i in range(30) for e in (identify(i, "t"), lead(i, "t"))]
            assert post(url, "/v1/batch", {"batch": events}, write_key_headers())[0] == 200
            until(lambda: len(first.outcomes()) >= 1, what="a first outcome")
            first.signal(signal.SIGTERM)
            started = time.monotonic()
            assert first.wait(30) == 0
            assert time.monotonic() - started < 15
        finally:
            first.stop()
        # Whatever the drain finished has its outcome; the rest is delivered by the next start.
        second = Service(*args, cwd=tmp_path, name="second")
        try:
            second.url  # noqa: B018 - waits until it listens
            until(lambda: len(first.outcomes()) + len(second.outcomes()) == 60, what="every outcome")
            second.signal(signal.SIGTERM)
            assert second.wait(30) == 0
        finally:
            second.stop()
        ids = [o["messageId"] for o in first.outcomes() + second.outcomes()]
        assert sorted(ids) == sorted(e["messageId"] for e in events)  # exactly one outcome each
        assert sandbox.admin("GET", "state")["creates"] == 30


def test_serve_refuses_bad_configuration_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    def cli(*args: Any, env: dict[str, str] | None = None) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "engine", *map(str, args)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("SIGNAL_")}, **(env or {})},
        )

    settings = tmp_path / "s.yaml"
    settings.write_text("client_id: c\nclient_secret: s-abcdef\nrefresh_token: r-abcdef\n")
    result = cli("serve", "outreach/lead-capture", "--settings", settings, "--port", "0")
    assert result.returncode == 2 and "SIGNAL_WRITE_KEYS" in result.stderr and len(result.stderr.splitlines()) == 1
    result = cli("serve", "outreach/lead-capture", "--port", "0", env={"SIGNAL_WRITE_KEYS": "k-123456"})
    assert result.returncode == 2 and "client_secret" in result.stderr
    (tmp_path / "state").mkdir()
    holder = Service(
        "serve",
        "outreach/lead-capture",
        "--settings",
        settings,
        "--state",
        tmp_path / "state",
        "--port",
        "0",
        cwd=tmp_path,
        name="holder",
    )
    try:
        port = holder.url.rsplit(":", 1)[1]
        busy = cli(
            "serve",
            "outreach/lead-capture",
            "--settings",
            settings,
            "--state",
            tmp_path / "other",
            "--port",
            port,
            env={"SIGNAL_WRITE_KEYS": "k-123456"},
        )
        assert busy.returncode == 2 and "already in use" in busy.stderr and "Traceback" not in busy.stderr
        twice = cli(
            "serve",
            "outreach/lead-capture",
            "--settings",
            settings,
            "--state",
            tmp_path / "state",
            "--port",
            "0",
            env={"SIGNAL_WRITE_KEYS": "k-123456"},
        )
        assert twice.returncode == 2 and "another process is serving this state directory" in twice.stderr
    finally:
        holder.stop()
    assert json.dumps(result.stderr).count("s-abcdef") == 0
