"""stdout of ``serve`` is outcome lines only, in ``run``'s compact form, so ``serve | jq -c .`` reads it all.

What the process says about itself (``listening on URL``) is on stderr: a JSON
object with a ``url`` field under ``--log-format json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from service_helpers import REPO, Service, post, until, write_key_headers
from test_delivery_sandbox import ThreadedSandbox, fast_preset, unique_credentials, write_settings

CONSENT = {"consent": {"canonical": {"marketing": True}}}
# Non-ASCII on purpose: run writes it as UTF-8, not as \\u escapes, and so must serve.
PAGE = {"type": "page", "messageId": "stdout-page-é", "anonymousId": "anon-Zoë", "name": "Prix 😀"}
IDENTIFY = {
    "type": "identify",
    "messageId": "stdout-identify",
    "userId": "stdout-user",
    "context": CONSENT,
    "traits": {"email": "zoe@stdout.test", "firstName": "Zoë", "lastName": "Stdout"},
}
LEAD = {
    "type": "track",
    "event": "Demo Requested",
    "messageId": "stdout-lead",
    "userId": "stdout-user",
    "context": CONSENT,
}


def compact(record: object) -> str:
    """The form the spec asks of an outcome line: JSON without spaces, UTF-8 characters as they are."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def test_serve_stdout_is_compact_outcome_lines_only_and_says_where_it_listens_on_stderr(tmp_path: Path) -> None:
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
            "--log-format",
            "json",
            cwd=tmp_path,
            env={"PYTHONIOENCODING": "utf-8"},
            name="serve",
        )
        try:
            said = json.loads(serve.wait_for_notice(r"^\{.*\"url\".*\}$").group(0))
            url = said["url"]
            assert said["message"] == f"listening on {url}" and url.startswith("http://127.0.0.1:")
            status, _ = post(url, "/v1/batch", {"batch": [PAGE, IDENTIFY, LEAD]}, write_key_headers())
            assert status == 200
            until(lambda: len(serve.lines) == 3, what=lambda: f"three outcome lines; stderr: {serve.stderr()}")
            serve.signal(signal.SIGTERM)
            assert serve.wait(30) == 0
        finally:
            serve.stop()
    lines = serve.lines
    assert len(lines) == 3, lines  # nothing but the three outcomes, even after the drain
    for line in lines:
        assert line == compact(json.loads(line)), line
    by_id = {json.loads(line)["messageId"]: line for line in lines}
    assert json.loads(by_id["stdout-lead"])["outcome"] == "delivered"
    assert "listening on" not in "\n".join(lines)
    for line in serve.stderr().splitlines():  # --log-format json: stderr is JSON too
        json.loads(line)

    # The same dropped page through `run`: the same line, byte for byte, but for where it came from
    # (run numbers its input lines; serve names the integration, the queue entry and the worker).
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(PAGE, ensure_ascii=False) + "\n", encoding="utf-8")
    ran = subprocess.run(
        [sys.executable, "-m", "engine", "run", preset, "--events", events, "--dry-run", "--settings", settings],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert ran.returncode == 0, ran.stderr
    served = by_id["stdout-page-é"]
    record = json.loads(served)
    for key in ("entry", "worker", "integration"):
        served = served.replace(f'"{key}":{compact(record[key])},', "", 1)
    assert (served + "\n").encode("utf-8") == ran.stdout
