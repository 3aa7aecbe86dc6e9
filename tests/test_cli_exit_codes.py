"""Exit status, the same for every command (docs/guides/cli-run.md, "Exit status"), and the hints for a wrong input format.

0: every event ended delivered, dropped or would_send (check/golden: nothing wrong);
1: an event failed or was dead-lettered (check/golden: a problem was found);
2: a usage or configuration error, before any event was processed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parents[1]
BUILTIN = REPO / "presets" / "outreach" / "lead-capture.yaml"
PRESET = "outreach/lead-capture"
CONSENT = {"consent": {"canonical": {"marketing": True}}}


def lead(n: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Demo Requested",
        "userId": f"u-{n}",
        "messageId": f"m-{n}",
        "traits": {"email": f"lead{n}@acme.com"},
        "context": CONSENT,
    }


PAGE = {"type": "page", "anonymousId": "a-1", "messageId": "m-page"}


def ndjson(tmp_path: Path, *events: Any, name: str = "events.ndjson") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def failing_preset(tmp_path: Path) -> Path:
    """The built-in preset with a mapping bug: emails is a string, the output contract wants a list."""
    text = BUILTIN.read_text(encoding="utf-8")
    assert text.count('"emails": [traits.email],') == 1
    path = tmp_path / "failing.yaml"
    path.write_text(text.replace('"emails": [traits.email],', '"emails": traits.email,'), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# --- run ------------------------------------------------------------------------------------


def test_a_dry_run_of_sendable_and_dropped_events_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", PRESET, "--events", str(ndjson(tmp_path, lead(1), PAGE)), "--dry-run")
    assert code == 0
    assert [json.loads(line)["outcome"] for line in out.splitlines()] == ["would_send", "dropped"]


def test_a_dry_run_where_every_lead_fails_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = ndjson(tmp_path, lead(1), PAGE, lead(2))
    code, out, err = run(capsys, "run", str(failing_preset(tmp_path)), "--events", str(events), "--dry-run")
    assert code == 1
    got = [json.loads(line) for line in out.splitlines()]
    assert [(o["outcome"], o.get("cause")) for o in got] == [
        ("failed", "output_invalid"),
        ("dropped", None),
        ("failed", "output_invalid"),
    ]
    assert err.rstrip().endswith(": 1 dropped (1 event_not_mapped), 2 failed (2 output_invalid)")


def test_one_failure_among_good_events_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {**lead(2), "traits": {"email": "lead2@acme.com", "firstName": ["not", "text"]}}
    # A structured firstName is left out by its normaliser; the event still sends: 0.
    code, _, _ = run(capsys, "run", PRESET, "--events", str(ndjson(tmp_path, lead(1), bad)), "--dry-run")
    assert code == 0
    code, _, _ = run(
        capsys, "run", str(failing_preset(tmp_path)), "--events", str(ndjson(tmp_path, PAGE, lead(1))), "--dry-run"
    )
    assert code == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "outreach/lead-captur", "--events", "{events}", "--dry-run"],
        ["run", "{tmp}/nope.yaml", "--events", "{events}", "--dry-run"],
        ["explain", "outreach/lead-captur", "--event", "{events}"],
        ["dlq", "list", "outreach/lead-captur", "--state", "{tmp}"],
        ["check", "outreach/lead-captur"],
    ],
)
def test_a_missing_or_misspelt_preset_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    events = ndjson(tmp_path, PAGE)
    args = [a.format(events=events, tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    assert "no such preset file or preset name" in err


def test_a_bad_settings_file_exits_2_before_any_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("client_id: 12345\nconsent_categories: marketing\n", encoding="utf-8")
    code, out, err = run(
        capsys, "run", PRESET, "--events", str(ndjson(tmp_path, lead(1))), "--settings", str(settings), "--dry-run"
    )
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        f"{settings}:1: setting 'client_id' must be a string, got the number 12345; "
        'quote it to keep it as text: "12345"',
        f"{settings}:2: setting 'consent_categories' must be a list of strings, got the text 'marketing'; "
        "write it as a YAML list: [marketing]",
    ]


def test_a_broken_preset_given_to_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        BUILTIN.read_text(encoding="utf-8").replace("  concurrency: 8\n", "  concurrency: 0\n"), encoding="utf-8"
    )
    code, out, err = run(capsys, "run", str(broken), "--events", str(ndjson(tmp_path, lead(1))), "--dry-run")
    assert code == 2
    assert out == ""
    assert err.startswith(f"{broken}:") and "delivery.concurrency" in err


def test_an_unknown_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", PRESET, "--events", "-", "--dry-rnu"])
    assert info.value.code == 2


def test_an_unforeseen_error_exits_70_with_one_line_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import engine.cli.schema

    def broken(_args: Any) -> int:
        raise RuntimeError("a bug somewhere\nwith a second line")

    monkeypatch.setattr(engine.cli.schema, "cmd_schema", broken)
    assert main(["schema"]) == 70
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["signal-engine: internal error: RuntimeError: a bug somewhere"]


# --- check and golden: verdicts -------------------------------------------------------------


def test_check_is_a_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "check", PRESET)[0] == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        BUILTIN.read_text(encoding="utf-8").replace("  concurrency: 8\n", "  concurrency: 0\n"), encoding="utf-8"
    )
    code, out, _ = run(capsys, "check", str(broken))
    assert code == 1
    assert out.startswith(f"{broken}:")


def _golden_tree(tmp_path: Path) -> Path:
    case_dir = tmp_path / "golden" / "outreach" / "lead-capture"
    case_dir.mkdir(parents=True)
    source = REPO / "golden" / "outreach" / "lead-capture"
    for name in ("event-mapping-signed-up.json", "event-mapping-signed-up.expected.json"):
        (case_dir / name).write_text((source / name).read_text(encoding="utf-8"), encoding="utf-8")
    return case_dir


def test_golden_exits_0_when_every_case_passes_1_when_one_fails_2_without_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case_dir = _golden_tree(tmp_path)
    assert run(capsys, "golden", str(tmp_path / "golden"))[0] == 0
    expected = case_dir / "event-mapping-signed-up.expected.json"
    expected.write_text(expected.read_text(encoding="utf-8").replace('"signup"', '"sign-up"'), encoding="utf-8")
    code, out, _ = run(capsys, "golden", str(tmp_path / "golden"))
    assert code == 1
    assert "FAIL  outreach/lead-capture/event-mapping-signed-up" in out
    assert '-              "sign-up"' in out and '+              "signup"' in out
    assert run(capsys, "golden", str(tmp_path / "nowhere"))[0] == 2


# --- explain ------------------------------------------------------------------------------


def test_explain_exits_1_for_a_failing_event_and_0_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event = json.dumps(lead(1))
    assert run(capsys, "explain", PRESET, "--event", event)[0] == 0
    assert run(capsys, "explain", PRESET, "--event", json.dumps(PAGE))[0] == 0
    assert run(capsys, "explain", str(failing_preset(tmp_path)), "--event", event)[0] == 1


# --- input hints ----------------------------------------------------------------------------


def test_a_pretty_printed_json_array_gets_one_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.json"
    path.write_text(json.dumps([lead(1), PAGE, lead(2)], indent=2) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "run", PRESET, "--events", str(path), "--dry-run")
    lines = out.splitlines()
    assert len(lines) == len(path.read_text(encoding="utf-8").splitlines())  # still one outcome per line
    hints = [line for line in err.splitlines() if "hint" in line]
    assert hints == [
        f"signal-engine: hint: --events {path}: it holds a JSON array; NDJSON is expected, one JSON "
        f"object per line. Convert it with: jq -c '.[]' {path} > events.ndjson"
    ]
    assert err.splitlines()[0] == hints[0]  # before the summary
    assert code == 0  # every line is a drop: the exit status follows the table


def test_a_pretty_printed_object_gets_the_object_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(lead(1), indent=2) + "\n", encoding="utf-8")
    _, _, err = run(capsys, "run", PRESET, "--events", str(path), "--dry-run")
    hints = [line for line in err.splitlines() if "hint" in line]
    assert hints == [
        f"signal-engine: hint: --events {path}: its first line is not a JSON object; NDJSON is "
        f"expected, one JSON object per line. Convert it with: jq -c . {path} > events.ndjson"
    ]


def test_a_one_line_json_array_gets_the_array_hint_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.json"
    path.write_text(json.dumps([lead(1), PAGE]) + "\n", encoding="utf-8")
    _, out, err = run(capsys, "run", PRESET, "--events", str(path), "--dry-run")
    assert len(out.splitlines()) == 1
    assert "it holds a JSON array" in err and "jq -c '.[]'" in err


def test_ndjson_gets_no_hint_even_with_a_bad_line_later(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text("\n" + json.dumps(lead(1)) + "\n[1, 2]\n{oops\n", encoding="utf-8")
    _, out, err = run(capsys, "run", PRESET, "--events", str(path), "--dry-run")
    assert len(out.splitlines()) == 3
    assert "hint" not in err


def test_an_empty_input_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.ndjson"
    empty.write_text("\n  \n", encoding="utf-8")
    code, out, err = run(capsys, "run", PRESET, "--events", str(empty), "--dry-run")
    assert code == 0
    assert out == ""
    assert err == f"signal-engine: no events: --events {empty} is empty\n"


def test_a_json_array_on_stdin_gets_the_hint_in_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", PRESET, "--events", "-", "--dry-run"],
        input=json.dumps([lead(1)], indent=2),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    assert "signal-engine: hint: --events -: it holds a JSON array" in proc.stderr
    assert "jq -c '.[]' FILE > events.ndjson" in proc.stderr
