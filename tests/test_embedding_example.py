"""examples/embed_host.py, run the way its docstring tells a reader to run it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOST = REPO / "examples" / "embed_host.py"
EVENTS = REPO / "examples" / "lead-capture.ndjson"
DELIVERED = {"msg-005", "msg-007", "msg-009", "msg-010", "msg-013"}

# The product page, "Example: Demo Requested" -> "Outreach payload sent by Signal".
DEMO_REQUESTED_PAYLOAD = {
    "data": {
        "type": "prospect",
        "attributes": {
            "emails": ["jane.doe@acme.com"],
            "firstName": "Jane",
            "lastName": "Doe",
            "name": "Jane Doe",
            "title": "Head of Growth",
            "occupation": "Head of Growth",
            "company": "Acme Inc",
            "mobilePhones": ["+447700900123"],
            "tags": ["Signal", "demo-request"],
        },
    }
}


def run_host(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HOST), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def input_ids() -> list[str]:
    return [json.loads(line)["messageId"] for line in EVENTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_outcomes(stdout: str) -> dict[str, dict[str, Any]]:
    """One outcome per event (printed as each is decided, so in any order)."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    ids = input_ids()
    assert sorted(line["index"] for line in lines) == list(range(len(ids)))
    by_id = {line["messageId"]: line for line in lines}
    assert sorted(by_id) == sorted(ids)
    assert all(by_id[m]["index"] == i for i, m in enumerate(ids))
    assert {m for m, line in by_id.items() if line["outcome"] == "delivered"} == DELIVERED
    assert {line["outcome"] for m, line in by_id.items() if m not in DELIVERED} == {"dropped"}
    return by_id


def test_embed_host_sandbox_demo() -> None:
    result = run_host("--sandbox")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    by_id = check_outcomes(result.stdout)
    demo = by_id["msg-005"]
    assert demo["response"]["status"] == 201
    assert demo["request"]["body"] == DEMO_REQUESTED_PAYLOAD
    assert demo["request"]["headers"]["Authorization"] == "Bearer ***"
    assert result.stderr.strip().splitlines()[-1] == "embed_host: 5 delivered, 14 dropped; 1 access token(s) minted"
    # The sandbox's well-known demo credentials are still secrets to the engine.
    assert "sandbox-secret" not in result.stdout + result.stderr
    assert "sandbox-refresh-token" not in result.stdout + result.stderr


def test_embed_host_with_settings_and_events_against_a_sandbox_process(tmp_path: Path) -> None:
    # Port 0: the sandbox picks a free port and names it in its first line (a port probed free
    # beforehand could be taken by another process before the sandbox binds it).
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "engine", "sandbox", "outreach", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        first = sandbox.stdout.readline()  # printed once it listens; empty if it exited
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert match, f"sandbox did not start: {first!r} {sandbox.stderr.read() if sandbox.stderr else ''}"
        base = match.group(1)
        settings = tmp_path / "settings.yaml"
        settings.write_text(
            "client_id: sandbox-client\nclient_secret: sandbox-secret\n"
            f"refresh_token: sandbox-refresh-token\nbase_url: {base}\n",
            encoding="utf-8",
        )
        result = run_host("--settings", settings, "--events", EVENTS, "--state", tmp_path / "state")
        assert result.returncode == 0, result.stderr
        check_outcomes(result.stdout)
        with urllib.request.urlopen(f"{base}/_sandbox/state", timeout=5) as resp:
            state = json.loads(resp.read())
        assert len(state["prospects"]) == 5 and state["mints"] == 1
        assert 401 not in state["statuses"] and 415 not in state["statuses"]
        with contextlib.closing(sqlite3.connect(tmp_path / "state" / "state.db")) as conn:
            assert conn.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 1  # the rotated token was kept
    finally:
        sandbox.terminate()  # by the PID this test started
        try:
            sandbox.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sandbox.kill()
            sandbox.wait(timeout=10)
        for stream in (sandbox.stdout, sandbox.stderr):
            if stream:
                stream.close()
