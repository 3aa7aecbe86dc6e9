"""Help and messages say what is true: every option explained, no hint for an option that does not exist."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.cli.main import _parser
from engine.sandbox.outreach import build_parser

PRESET = "outreach/lead-capture"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return found


def _options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    return [
        a.dest
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction))
        and (not a.help or a.help == argparse.SUPPRESS)
        and a.dest != "options"
    ]


def test_every_command_option_has_help() -> None:
    commands = _subparsers(_parser())
    assert {"check", "run", "explain", "golden", "init", "schema", "dlq list", "dlq replay", "sandbox"} <= set(commands)
    missing = {name: _options_without_help(p) for name, p in commands.items() if _options_without_help(p)}
    assert not missing, f"options without help: {missing}"


def test_sandbox_help_lists_destinations_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sandbox", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: signal-engine sandbox [-h] DESTINATION\n")
    assert "{outreach}" not in out and "options     options of the sandbox" not in out
    assert "  outreach   Outreach: OAuth token endpoint" in out
    assert "signal-engine sandbox DESTINATION --help" in out


def test_every_sandbox_option_has_help_and_shows_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: argparse wraps at hyphens otherwise
    parser = build_parser()
    assert _options_without_help(parser) == []
    with pytest.raises(SystemExit):
        main(["sandbox", "outreach", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert text.startswith("usage: signal-engine sandbox outreach [-h]")
    for flag, default in [
        ("--host", "127.0.0.1"),
        ("--port", "8765"),
        ("--quota", "10000"),
        ("--window", "3600.0"),
        ("--token-ttl", "7200"),
        ("--mint-limit", "1"),
        ("--mint-window", "60.0"),
        ("--fault-rate", "0.0"),
        ("--fault-seed", "a fresh seed"),
        ("--fault", "none"),
        ("--client-id", "sandbox-client"),
        ("--client-secret", "sandbox-secret"),
        ("--refresh-token", "sandbox-refresh-token"),
    ]:
        section = text.split(f" {flag} {flag[2:].upper().replace('-', '_')} ", 1)[1].split(" --", 1)[0]
        assert section.endswith(f"(default: {default})"), (flag, section)
        assert section.count("(default:") == 1, (flag, section)


def test_a_sandbox_option_error_is_argparse_s(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "sandbox", "outreach", "--fault", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid fault 'nope'" in proc.stderr and "Traceback" not in proc.stderr


def test_dlq_replay_without_settings_suggests_settings_not_dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["dlq", "replay", PRESET, "--state", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--dry-run" not in err  # dlq replay has no --dry-run
    assert err.splitlines()[-1] == "signal-engine: pass --settings FILE"
    assert "required setting 'client_id' is missing" in err
    assert "required setting 'client_secret' is missing" in err  # every problem at once


def test_run_without_settings_suggests_settings_or_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", PRESET, "--events", "-", "--state", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[-1] == "signal-engine: pass --settings FILE (or use --dry-run, which needs no credentials)"


def test_dlq_list_on_a_missing_state_directory_says_it_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-state"
    code = main(["dlq", "list", PRESET, "--state", str(missing)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err == (
        f"signal-engine: --state {missing}: no such state directory (pass the --state DIR that run used)\n"
    )
    assert not missing.exists()  # listing never creates it


def test_dlq_list_on_an_empty_state_directory_lists_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dlq", "list", PRESET, "--state", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == ""
    assert captured.err == "signal-engine: 0 dead letter(s) for outreach/lead-capture\n"


def test_bare_dlq_and_bare_command_print_help_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq"]) == 2
    assert "list" in capsys.readouterr().err
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "explain" in err and "Exit status" in err


def test_explain_help_and_json_are_honest(capsys: pytest.CaptureFixture[str]) -> None:
    event = {"type": "page", "messageId": "m"}
    assert main(["explain", PRESET, "--event", json.dumps(event), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["outcome"]["reason"] == "event_not_mapped"
