"""``signal-engine sandbox NAME`` finds every fake in engine/sandbox/ and serves it as a real process."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.cli.sandbox import available

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ["close", "hubspot", "meta", "outreach", "salesforce", "salesloft"]


def test_every_fake_in_the_package_is_offered_and_keeps_the_contract() -> None:
    assert available() == EXPECTED
    for name in available():
        module = importlib.import_module(f"engine.sandbox.{name}")
        for attr in ("SUMMARY", "SandboxConfig", "STATE_KEY", "create_app", "start_sandbox", "main", "build_parser"):
            assert hasattr(module, attr), f"engine.sandbox.{name} lacks {attr}"


@pytest.mark.parametrize("name", EXPECTED)
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    parser = importlib.import_module(f"engine.sandbox.{name}").build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    formatter = parser._get_formatter()
    for action in options:
        assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings} has no help"
        shown = formatter._expand_help(action)  # the help as --help prints it, %(default)s filled in
        assert shown.endswith(")") and shown.count("(default: ") == 1, (name, action.option_strings, shown)


def test_sandbox_help_lists_every_destination_with_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["sandbox", "--help"])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        summary = importlib.import_module(f"engine.sandbox.{name}").SUMMARY
        assert f"  {name:<10} {summary}" in out


def test_unknown_sandbox_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["sandbox", "nope"])
    assert excinfo.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_options_reach_the_chosen_sandbox(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["sandbox", "close", "--fault", "explode"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "signal-engine sandbox close" in err and "explode" in err


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
@pytest.mark.parametrize("name", ["hubspot", "salesloft", "close", "salesforce"])
def test_sandbox_serves_until_ctrl_c(name: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "sandbox", name, "--port", "0", "--fault", "503"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "sandbox listening on http://127.0.0.1:" in line, line
        url = next(word for word in line.split() if word.startswith("http://"))
        with urllib.request.urlopen(f"{url}/_sandbox/state", timeout=5) as resp:
            assert json.load(resp)["pending_faults"] == ["503"]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in stderr
