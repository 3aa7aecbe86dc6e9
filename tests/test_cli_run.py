"""``signal-engine run --dry-run``: one JSON outcome line per input line, secrets never printed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main

CLIENT_SECRET = "cs-9f8e7d6c5b4a-client-secret"
REFRESH_TOKEN = "rt-1a2b3c4d5e6f-refresh-token"

IDENTIFY = {
    "type": "identify",
    "userId": "user-123",
    "messageId": "m-identify",
    "traits": {
        "email": "  Jane.Doe@ACME.com ",
        "firstName": "Jane",
        "lastName": "Doe",
        "company": "Acme Inc",
        "title": "Head of Growth",
        "phone": "+44 7700 900123",
    },
}
DEMO = {
    "type": "track",
    "event": "Demo Requested",
    "userId": "user-123",
    "messageId": "m-demo",
    "context": {"consent": {"canonical": {"marketing": True}}},
}
PAGE = {"type": "page", "anonymousId": "anon-1", "messageId": "m-page"}
NO_CONSENT = {"type": "track", "event": "Signed Up", "userId": "user-123", "messageId": "m-noconsent"}


def ndjson(*items: Any) -> str:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in items)


def cli(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def outcomes(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_dry_run_prints_one_line_per_non_blank_input_line_in_order(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text(ndjson(IDENTIFY, "", PAGE, "   ", DEMO, NO_CONSENT), encoding="utf-8")
    proc = cli("run", "outreach/lead-capture", "--events", str(events), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    got = outcomes(proc.stdout)
    assert [(o["index"], o["messageId"], o["outcome"], o.get("reason")) for o in got] == [
        (0, "m-identify", "dropped", "event_not_mapped"),
        (2, "m-page", "dropped", "event_not_mapped"),
        (4, "m-demo", "would_send", None),
        (5, "m-noconsent", "dropped", "no_consent"),
    ]
    request = got[2]["request"]
    assert request["method"] == "POST"
    assert request["url"] == "https://api.outreach.io/api/v2/prospects"
    assert request["headers"]["Content-Type"] == "application/vnd.api+json"
    assert request["headers"]["Authorization"] == "Bearer ***"
    attrs = request["body"]["data"]["attributes"]
    assert attrs["emails"] == ["jane.doe@acme.com"]
    assert attrs["mobilePhones"] == ["+447700900123"]
    assert attrs["tags"] == ["Signal", "demo-request"]


def test_non_json_line_gets_invalid_event_and_the_run_continues(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text(ndjson(IDENTIFY, "{not json", "[1, 2]", '"a string"', DEMO), encoding="utf-8")
    proc = cli("run", "outreach/lead-capture", "--events", str(events), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0
    got = outcomes(proc.stdout)
    assert len(got) == 5
    assert got[1]["index"] == 1
    assert (got[1]["outcome"], got[1]["reason"]) == ("dropped", "invalid_event")
    assert "line 2" in got[1]["detail"] and "JSON" in got[1]["detail"]
    assert (got[2]["reason"], got[3]["reason"]) == ("invalid_event", "invalid_event")
    assert "JSON object" in got[2]["detail"]
    assert got[4]["outcome"] == "would_send"
    assert "Traceback" not in proc.stderr


def test_events_from_stdin(tmp_path: Path) -> None:
    proc = cli(
        "run", "outreach/lead-capture", "--events", "-", "--dry-run", cwd=tmp_path, stdin=ndjson(IDENTIFY, DEMO, "nope")
    )
    assert proc.returncode == 0, proc.stderr
    got = outcomes(proc.stdout)
    assert [o["outcome"] for o in got] == ["dropped", "would_send", "dropped"]
    assert got[2]["reason"] == "invalid_event"


def test_preset_by_path(tmp_path: Path) -> None:
    preset = Path(__file__).resolve().parents[1] / "presets" / "outreach" / "lead-capture.yaml"
    proc = cli("run", str(preset), "--events", "-", "--dry-run", cwd=tmp_path, stdin=ndjson(PAGE))
    assert proc.returncode == 0
    assert outcomes(proc.stdout)[0]["reason"] == "event_not_mapped"


def test_settings_file_with_env_values(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "client_id: ${OUTREACH_CLIENT_ID}\nclient_secret: ${OUTREACH_CLIENT_SECRET}\n"
        "refresh_token: ${OUTREACH_REFRESH_TOKEN}\nbase_url: http://127.0.0.1:${SANDBOX_PORT}\n"
        "consent_categories: [marketing, '${EXTRA_CATEGORY}']\n",
        encoding="utf-8",
    )
    env = {
        "OUTREACH_CLIENT_ID": "cid-42",
        "OUTREACH_CLIENT_SECRET": CLIENT_SECRET,
        "OUTREACH_REFRESH_TOKEN": REFRESH_TOKEN,
        "SANDBOX_PORT": "8765",
        "EXTRA_CATEGORY": "analytics",
    }
    both = {**DEMO, "context": {"consent": {"canonical": {"marketing": True, "analytics": True}}}}
    proc = cli(
        "run",
        "outreach/lead-capture",
        "--events",
        "-",
        "--settings",
        str(settings),
        "--dry-run",
        cwd=tmp_path,
        stdin=ndjson(IDENTIFY, DEMO, both),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    got = outcomes(proc.stdout)
    assert got[1]["reason"] == "no_consent"
    assert got[1]["detail"] == "consent not granted for: analytics"
    assert got[2]["outcome"] == "would_send"
    assert got[2]["request"]["url"] == "http://127.0.0.1:8765/api/v2/prospects"
    for stream in (proc.stdout, proc.stderr):
        assert CLIENT_SECRET not in stream and REFRESH_TOKEN not in stream


def test_unset_secret_variable_is_fine_for_a_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A production settings file dry-runs without its secrets exported (issue: dry runs need no secrets)."""
    monkeypatch.delenv("SIGNAL_TEST_UNSET_VARIABLE", raising=False)
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "client_id: abc\nclient_secret: ${SIGNAL_TEST_UNSET_VARIABLE}\nrefresh_token: ${SIGNAL_TEST_UNSET_VARIABLE}\n",
        encoding="utf-8",
    )
    events = tmp_path / "events.ndjson"
    events.write_text(ndjson(IDENTIFY, DEMO), encoding="utf-8")
    code = main(["run", "outreach/lead-capture", "--events", str(events), "--settings", str(settings), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [o["outcome"] for o in outcomes(out)] == ["dropped", "would_send"]


def test_unset_secret_variable_is_an_error_when_delivering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGNAL_TEST_UNSET_VARIABLE", raising=False)
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "client_id: abc\nclient_secret: ${SIGNAL_TEST_UNSET_VARIABLE}\nrefresh_token: rt-1234567890\n", encoding="utf-8"
    )
    events = tmp_path / "events.ndjson"
    events.write_text(ndjson(PAGE), encoding="utf-8")
    state = tmp_path / "state"
    code = main(
        ["run", "outreach/lead-capture", "--events", str(events), "--settings", str(settings), "--state", str(state)]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        f"{settings}:2: setting 'client_secret': environment variable SIGNAL_TEST_UNSET_VARIABLE is not set"
    ]
    assert not state.exists()


def test_missing_events_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.ndjson"
    code = main(["run", "outreach/lead-capture", "--events", str(missing), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert str(missing) in lines[0] and "cannot open" in lines[0]
    assert "Traceback" not in err


def test_missing_events_file_subprocess(tmp_path: Path) -> None:
    proc = cli("run", "outreach/lead-capture", "--events", "nope.ndjson", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert "nope.ndjson" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_broken_preset_in_run_exits_2_with_located_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "broken.yaml"
    builtin = Path(__file__).resolve().parents[1] / "presets" / "outreach" / "lead-capture.yaml"
    preset.write_text(
        builtin.read_text(encoding="utf-8").replace("region_from: country", "region_from: nation"), encoding="utf-8"
    )
    code = main(["run", str(preset), "--events", "-", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2  # a configuration error: no event was processed
    assert out == ""
    assert err.startswith(f"{preset}:")
    assert "identity.traits.phone.region_from: 'nation' is not a declared trait" in err
    assert "Traceback" not in err


def test_secret_settings_never_printed(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        f"client_id: cid-42\nclient_secret: {CLIENT_SECRET}\nrefresh_token: {REFRESH_TOKEN}\n", encoding="utf-8"
    )
    proc = cli(
        "run",
        "outreach/lead-capture",
        "--events",
        "-",
        "--settings",
        str(settings),
        "--dry-run",
        cwd=tmp_path,
        stdin=ndjson(IDENTIFY, DEMO, "not json", NO_CONSENT),
    )
    assert proc.returncode == 0, proc.stderr
    assert len(outcomes(proc.stdout)) == 4
    for stream in (proc.stdout, proc.stderr):
        assert CLIENT_SECRET not in stream
        assert REFRESH_TOKEN not in stream


@pytest.mark.parametrize(
    "bad_line",
    [
        "base_url: http://example.com\n",
        "client_secret: [a, b]\n",
        "unknown_thing: 1\n",
    ],
)
def test_settings_errors_do_not_print_secret_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_line: str
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"refresh_token: {REFRESH_TOKEN}\n{bad_line}", encoding="utf-8")
    code = main(["run", "outreach/lead-capture", "--events", "-", "--settings", str(settings), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"{settings}:2" in err
    assert REFRESH_TOKEN not in out + err


def test_duplicate_secret_key_in_settings_is_not_echoed(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        f"client_id: cid-42\nclient_secret: {CLIENT_SECRET}\nclient_secret: {REFRESH_TOKEN}\n", encoding="utf-8"
    )
    proc = cli(
        "run",
        "outreach/lead-capture",
        "--events",
        "-",
        "--settings",
        str(settings),
        "--dry-run",
        cwd=tmp_path,
        stdin=ndjson(PAGE),
    )
    assert proc.returncode == 2
    assert f"{settings}:3" in proc.stderr
    assert CLIENT_SECRET not in proc.stderr
    assert REFRESH_TOKEN not in proc.stderr


def test_run_output_follows_the_current_sys_stdout(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text(ndjson(PAGE), encoding="utf-8")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["run", "outreach/lead-capture", "--events", str(events), "--dry-run"])
    assert code == 0
    assert [o["messageId"] for o in outcomes(buffer.getvalue())] == ["m-page"]


def test_run_in_process_with_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(ndjson(IDENTIFY, "", "oops", DEMO)))
    code = main(["run", "outreach/lead-capture", "--events", "-", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0
    assert err.startswith("signal-engine: 3 event(s) in ")
    assert err.endswith(": 1 would_send, 2 dropped (1 event_not_mapped, 1 invalid_event)\n")
    got = outcomes(out)
    assert [(o["index"], o["outcome"], o.get("reason")) for o in got] == [
        (0, "dropped", "event_not_mapped"),
        (2, "dropped", "invalid_event"),
        (3, "would_send", None),
    ]
