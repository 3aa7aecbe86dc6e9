"""``--log-format json``: every stderr line is one JSON object, failures included, details in fields.

A log shipper reads stderr line by line; a single plain line (argparse's
usage, an unknown preset, a missing file, a bad settings file, a summary)
breaks its parsing exactly when something went wrong. Each kind of line the
CLI writes under ``--log-format json`` is checked here, in a real process
where argparse is involved (it exits before ``main`` returns).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.cli.log_handlers import JsonFormatter
from engine.cli.logs import wants_json
from engine.redaction import Redactor
from test_delivery_sandbox import ThreadedSandbox, fast_preset, unique_credentials, write_settings

REPO = Path(__file__).resolve().parents[1]
PRESET = "outreach/lead-capture"
CONSENT = {"consent": {"canonical": {"marketing": True}}}
LEAD = {
    "type": "track",
    "event": "Demo Requested",
    "userId": "u-1",
    "messageId": "m-1",
    "traits": {"email": "jane@acme.com"},
    "context": CONSENT,
}


def entries(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as one JSON object (a line that is not one fails the test)."""
    lines = stderr.splitlines()
    assert lines, "nothing on stderr"
    parsed = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")
        assert isinstance(value, dict), line
        assert {"time", "level", "logger", "message"} <= set(value), value
        parsed.append(value)
    return parsed


def cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
    )


def events_file(tmp_path: Path, *events: dict[str, Any]) -> Path:
    path = tmp_path / "events.ndjson"
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


@pytest.mark.parametrize("argv", [["--log-format", "json"], ["--log-format=json"], ["--log-f", "json"]])
def test_the_flag_is_seen_before_argparse_runs(argv: list[str]) -> None:
    assert wants_json(["run", PRESET, *argv])
    assert not wants_json(["run", PRESET, "--log-format", "text"])
    assert not wants_json(["run", PRESET, "--", "--log-format", "json"])


def test_an_argparse_error_is_one_json_object_with_the_usage_in_a_field() -> None:
    proc = cli("run", "--log-format", "json")
    assert proc.returncode == 2 and proc.stdout == ""
    (entry,) = entries(proc.stderr)
    assert entry["level"] == "error" and entry["event"] == "usage_error" and entry["exit_code"] == 2
    assert entry["message"] == "the following arguments are required: PRESET, --events"
    assert entry["command"] == "signal-engine run"
    assert entry["usage"].startswith("usage: signal-engine run ") and "--events FILE|-" in entry["usage"]


def test_a_bad_option_value_is_one_json_object() -> None:
    proc = cli("run", PRESET, "--events", "-", "--grace", "soon", "--log-format=json")
    assert proc.returncode == 2
    (entry,) = entries(proc.stderr)
    assert entry["event"] == "usage_error" and "--grace" in entry["message"] and "soon" in entry["message"]


def test_help_is_still_text_on_stdout() -> None:
    proc = cli("run", "--help", "--log-format", "json")
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.startswith("usage: signal-engine run")


def test_an_unknown_preset_is_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["run", "acme/nothing", "--events", str(events_file(tmp_path, LEAD)), "--dry-run", "--log-format", "json"]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (entry,) = entries(captured.err)
    assert entry["event"] == "preset_error" and entry["exit_code"] == 2
    assert entry["message"].startswith("acme/nothing: no such preset file or preset name")


def test_a_missing_events_file_is_one_json_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.ndjson"
    code = main(["run", PRESET, "--events", str(missing), "--dry-run", "--log-format", "json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (entry,) = entries(captured.err)
    assert entry["event"] == "usage_error"
    assert entry["message"] == f"--events {missing}: cannot open: No such file or directory"


def test_a_bad_settings_file_is_one_json_object_with_each_problem_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("client_id: 12345\nconsent_categories: marketing\n", encoding="utf-8")
    code = main(
        [
            "run",
            PRESET,
            "--events",
            str(events_file(tmp_path, LEAD)),
            "--settings",
            str(settings),
            "--dry-run",
            "--log-format",
            "json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (entry,) = entries(captured.err)
    assert entry["event"] == "settings_error" and entry["level"] == "error"
    assert (entry["file"], entry["line"]) == (str(settings), 1)
    assert [(p["file"], p["line"]) for p in entry["problems"]] == [(str(settings), 1), (str(settings), 2)]
    assert entry["problems"][0]["message"].startswith("setting 'client_id' must be a string")
    assert entry["problems"][1]["message"].startswith("setting 'consent_categories' must be a list of strings")


def test_a_yaml_error_in_the_settings_gives_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("client_id: [\n", encoding="utf-8")
    assert (
        main(
            [
                "run",
                PRESET,
                "--events",
                str(events_file(tmp_path, LEAD)),
                "--settings",
                str(settings),
                "--dry-run",
                "--log-format",
                "json",
            ]
        )
        == 2
    )
    (entry,) = entries(capsys.readouterr().err)
    assert entry["file"] == str(settings) and isinstance(entry["line"], int) and isinstance(entry["column"], int)
    assert not entry["message"].startswith(str(settings))


def test_without_the_flag_errors_stay_plain_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "acme/nothing", "--events", str(events_file(tmp_path, LEAD)), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("signal-engine: acme/nothing: no such preset")


def test_an_internal_error_is_one_json_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import engine.cli.run

    def broken(_args: Any) -> int:
        raise RuntimeError("a bug somewhere\nwith a second line")

    monkeypatch.setattr(engine.cli.run, "cmd_run", broken)
    assert main(["run", PRESET, "--events", "-", "--log-format", "json"]) == 70
    (entry,) = entries(capsys.readouterr().err)
    assert entry["event"] == "internal_error" and entry["exit_code"] == 70
    assert entry["message"] == "internal error: RuntimeError: a bug somewhere"


def test_the_dlq_replay_summary_is_json_with_its_counts_in_fields(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "client_id: c\nclient_secret: s\nrefresh_token: r\nbase_url: http://127.0.0.1:9\n", encoding="utf-8"
    )
    proc = cli("dlq", "replay", PRESET, "--settings", settings, "--state", state, "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    (entry,) = entries(proc.stderr)
    assert entry["event"] == "summary" and entry["level"] == "info"
    assert (entry["replayed"], entry["delivered"], entry["left"]) == (0, 0, 0)
    assert entry["message"] == "replayed 0, delivered 0, 0 left in the dead-letter store"


def test_delivery_log_lines_carry_their_details_in_fields(tmp_path: Path) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        proc = cli(
            "run",
            fast_preset(tmp_path),
            "--events",
            events_file(tmp_path, LEAD),
            "--settings",
            settings,
            "--state",
            tmp_path / "state",
            "--verbose",
            "--log-format",
            "json",
            cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    logged = entries(proc.stderr)
    attempts = [e for e in logged if "attempt" in e]
    assert attempts, logged
    first = attempts[0]
    assert first["event_index"] == 0 and first["messageId"] == "m-1" and first["attempt"] == 1
    assert first["method"] in ("GET", "POST", "PATCH") and first["url"].startswith(sandbox.base_url)
    assert isinstance(first["status"], int) and first["verdict"]
    assert any(e.get("expires_in") == 7200 for e in logged), "the mint says the token's lifetime in a field"
    assert logged[-1]["event"] == "summary"
    for secret in (creds["client_secret"], creds["refresh_token"], *sandbox.issued):
        assert secret not in proc.stderr


def test_extra_fields_of_a_record_become_fields_and_are_redacted() -> None:
    record = logging.LogRecord("engine.delivery.sender", logging.INFO, __file__, 1, "attempt %d", (2,), None)
    record.__dict__.update(event_index=4, status=429, url="https://x.test/?key=tok-99887766")
    entry = json.loads(JsonFormatter(Redactor(["tok-99887766"])).format(record))
    assert entry["message"] == "attempt 2"
    assert (entry["event_index"], entry["status"]) == (4, 429)
    assert "tok-99887766" not in json.dumps(entry)
