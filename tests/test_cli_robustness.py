"""Bad input never ends a run with a traceback or an internal error.

One bad line of the event stream becomes an ``invalid_event`` outcome for
that line and the lines around it are processed as usual; a bad file or
setting is one line on stderr with exit code 2, and never echoes a secret.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import common as cli_common
from engine.cli import events_input, main
from engine.language.settings import check_url
from engine.language.yaml_source import YamlSourceError, load_yaml
from engine.outcome import dropped

PRESET = "outreach/lead-capture"
SECRET = "Zk9secretVALUE"


def lead(message_id: str, first_name: str = "Jane") -> str:
    return json.dumps(
        {
            "type": "track",
            "event": "Demo Requested",
            "userId": "u-" + message_id,
            "messageId": message_id,
            "traits": {"email": f"{message_id}@acme.com", "firstName": first_name},
            "context": {"consent": {"canonical": {"marketing": True}}},
        }
    )


def dry_run(capsys: pytest.CaptureFixture[str], events: Path) -> tuple[list[dict[str, Any]], str]:
    code = main(["run", PRESET, "--events", str(events), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    return [json.loads(line) for line in captured.out.splitlines()], captured.err


def summary(outcomes: list[dict[str, Any]]) -> list[tuple[int, str | None, str]]:
    return [(o["index"], o["messageId"], o.get("reason") or o["outcome"]) for o in outcomes]


def cli_process(
    *args: str | bytes, cwd: Path, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


# --- one bad line in the event stream -------------------------------------------------------


def test_a_line_that_is_not_utf8_is_one_invalid_event(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes(
        b"\n".join([lead("m1").encode(), lead("m2").encode(), b'{"type":"page","name":"Caf\xe9"}', lead("m3").encode()])
        + b"\n"
    )
    outcomes, _ = dry_run(capsys, events)
    assert summary(outcomes) == [
        (0, "m1", "would_send"),
        (1, "m2", "would_send"),
        (2, None, "invalid_event"),
        (3, "m3", "would_send"),
    ]
    assert outcomes[2]["detail"] == "line 3: not UTF-8 text (byte 0xe9 at column 27)"


def test_not_utf8_column_counts_characters_not_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes('{"name":"Zoë'.encode() + b"\xff" + b'"}\n' + lead("m1").encode() + b"\n")
    outcomes, _ = dry_run(capsys, events)
    assert outcomes[0]["detail"] == "line 1: not UTF-8 text (byte 0xff at column 13)"  # 14 if bytes were counted
    assert summary(outcomes)[1] == (1, "m1", "would_send")


@pytest.mark.parametrize(
    "bad_line, detail",
    [
        (
            '{"type":"page","properties":{"n":' + "9" * 5000 + "}}",
            "line 2: not valid JSON: a number has more than 4300 digits",
        ),
        (
            '{"type":"page","properties":{"n":' + "[" * 100_000 + "]" * 100_000 + "}}",
            "line 2: not valid JSON: nested too deeply",
        ),
        ('{"type":"page",', "line 2: not valid JSON: Expecting property name enclosed in double quotes at column 16"),
        ('{"type":"page","properties":{"n":NaN}}', "line 2: not valid JSON: NaN is not a JSON number"),
        ('{"type":"page","properties":{"n":-Infinity}}', "line 2: not valid JSON: -Infinity is not a JSON number"),
    ],
)
def test_json_the_parser_rejects_is_one_invalid_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_line: str, detail: str
) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text("\n".join([lead("m1"), bad_line, lead("m2")]) + "\n", encoding="utf-8")
    outcomes, _ = dry_run(capsys, events)
    assert summary(outcomes) == [(0, "m1", "would_send"), (1, None, "invalid_event"), (2, "m2", "would_send")]
    assert outcomes[1]["detail"] == detail


def test_a_lone_surrogate_is_written_as_an_escape_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text("\n".join([lead("m1"), lead("m2", "Bo\ud800b"), lead("m3", "Zoë")]) + "\n", encoding="utf-8")
    assert "\\ud800" in events.read_text(encoding="utf-8")  # the file holds the JSON escape, not the character
    code = main(["run", PRESET, "--events", str(events), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.startswith("signal-engine: 3 event(s) in ") and captured.err.endswith(": 3 would_send\n")
    lines = captured.out.splitlines()
    outcomes = [json.loads(line) for line in lines]
    assert summary(outcomes) == [(0, "m1", "would_send"), (1, "m2", "would_send"), (2, "m3", "would_send")]
    assert "\\ud800" in lines[1]  # escaped, so the line can be encoded
    assert "Zoë" in lines[2]  # other lines keep their characters as they are


def test_emit_falls_back_to_ascii_escapes_when_the_output_cannot_encode_a_character() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", newline="\n")
    cli_common.emit(dropped(0, "m-é", "invalid_event", "line 1: Zoë"), out)
    cli_common.emit(dropped(1, "m-2", "invalid_event", "plain"), out)
    lines = raw.getvalue().decode("ascii").splitlines()
    assert [json.loads(line)["messageId"] for line in lines] == ["m-é", "m-2"]
    assert "\\u00e9" in lines[0]


def test_crlf_cr_and_bom_keep_line_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes(
        b"\xef\xbb\xbf"
        + lead("m1").encode()
        + b"\r\n\r\n"
        + lead("m2").encode()
        + b"\r"
        + b"{oops\r\n"
        + lead("m3").encode()
    )
    outcomes, _ = dry_run(capsys, events)
    assert summary(outcomes) == [
        (0, "m1", "would_send"),
        (2, "m2", "would_send"),
        (3, None, "invalid_event"),
        (4, "m3", "would_send"),
    ]
    assert outcomes[2]["detail"].startswith("line 4: not valid JSON: ")


def test_read_events_keeps_its_shape(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_bytes(b'{"a": 1}\n\n  \n\xff\n[1]\n')
    assert inspect.isgeneratorfunction(events_input.read_events)
    items = list(events_input.read_events(str(events)))
    assert items == [(0, {"a": 1}, None), (3, None, "line 4: not UTF-8 text (byte 0xff at column 1)"), (4, [1], None)]


def test_stdin_is_read_as_bytes_line_by_line(tmp_path: Path) -> None:
    stdin = (
        b"\xef\xbb\xbf"
        + lead("m1").encode()
        + b"\n"
        + b'{"name":"Caf\xe9"}\n'
        + ('{"n":' + "1" * 4400 + "}\n").encode()
        + lead("m2", "Bo\\ud800b").encode()
        + b"\n"
        + lead("m3").encode()
        + b"\n"
    )
    proc = cli_process(
        "run", PRESET, "--events", "-", "--dry-run", cwd=tmp_path, stdin=stdin, env={"PYTHONIOENCODING": "utf-8:strict"}
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert err.startswith("signal-engine: 5 event(s) in ")  # the summary is all stderr holds
    assert err.endswith(": 3 would_send, 2 dropped (2 invalid_event)\n") and len(err.splitlines()) == 1
    outcomes = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert summary(outcomes) == [
        (0, "m1", "would_send"),
        (1, None, "invalid_event"),
        (2, None, "invalid_event"),
        (3, "m2", "would_send"),
        (4, "m3", "would_send"),
    ]
    assert outcomes[1]["detail"] == "line 2: not UTF-8 text (byte 0xe9 at column 13)"
    assert outcomes[2]["detail"] == "line 3: not valid JSON: a number has more than 4300 digits"


# --- a bad --events file ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "events, message",
    [
        ("{tmp}", "cannot open: Is a directory"),
        ("{tmp}/missing.ndjson", "cannot open: No such file or directory"),
        ("{tmp}/file.txt/events.ndjson", "cannot open: Not a directory"),
        ("/proc/self/mem", "cannot read: Input/output error"),
    ],
)
def test_an_unusable_events_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], events: str, message: str
) -> None:
    if events.startswith("/proc") and not Path(events).exists():
        pytest.skip("needs Linux /proc")
    (tmp_path / "file.txt").write_text("x", encoding="utf-8")
    path = events.format(tmp=tmp_path)
    code = main(["run", PRESET, "--events", path, "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err == f"signal-engine: --events {path}: {message}\n"


def test_missing_stdin_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    code = main(["run", PRESET, "--events", "-", "--dry-run"])
    assert code == 2
    assert capsys.readouterr().err == "signal-engine: --events -: there is no standard input\n"


def test_delivery_checks_the_events_file_before_touching_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "client_id: cid\nclient_secret: cs-1234567890\nrefresh_token: rt-1234567890\nbase_url: http://127.0.0.1:9\n",
        encoding="utf-8",
    )
    state = tmp_path / "state"
    code = main(["run", PRESET, "--events", str(tmp_path), "--settings", str(settings), "--state", str(state)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == f"signal-engine: --events {tmp_path}: cannot open: Is a directory\n"
    assert not state.exists()


def test_check_prints_an_undecodable_file_name_escaped(tmp_path: Path) -> None:
    name = os.fsencode(str(tmp_path)) + b"/bad-\xfe.yaml"
    try:
        with open(name, "wb") as handle:
            handle.write(b"name: x\n")
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    proc = cli_process("check", name, cwd=tmp_path, env={"PYTHONIOENCODING": "utf-8:strict"})
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, err
    assert "internal error" not in err and "Traceback" not in err
    assert "bad-\\udcfe.yaml:1:1: " in proc.stdout.decode("ascii")


# --- settings: secrets are not echoed, bad URLs are one line ---------------------------------


def write_settings(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_an_undefined_alias_does_not_echo_the_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_settings(tmp_path, f"client_id: cid\nclient_secret: *{SECRET}\nrefresh_token: rt-123456789\n")
    code = main(["run", PRESET, "--events", os.devnull, "--settings", str(path)])
    captured = capsys.readouterr()
    assert code == 2
    assert SECRET not in captured.err + captured.out
    assert captured.err.startswith(f"{path}:2:16: found undefined alias")
    assert len(captured.err.splitlines()) == 1


@pytest.mark.parametrize(
    "text, where, problem",
    [
        (f"client_secret: *{SECRET}\n", "1:16", "found undefined alias"),
        (f"client_secret: [*{SECRET}]\n", "1:17", "found undefined alias"),
        (f"client_secret: *{SECRET}'x'\n", "1:16", "found undefined alias"),
        (f"client_secret: !{SECRET}!x y\n", "1:16", "found undefined tag handle"),
        (f"client_secret: !<{SECRET} y\n", "1:", "invalid tag"),
        ("client_secret: &]\n", "1:", "invalid anchor"),
    ],
)
def test_yaml_alias_anchor_and_tag_errors_do_not_quote_names(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = write_settings(tmp_path, text)
    with pytest.raises(YamlSourceError) as info:
        load_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{where}")
    assert f": {problem}" in message
    assert SECRET not in message and "]'" not in message
    assert len(message.splitlines()) == 1


def test_a_reused_anchor_warning_does_not_reach_stderr(tmp_path: Path) -> None:
    path = write_settings(tmp_path, f"client_id: &{SECRET} a\nclient_secret: &{SECRET} b\n")
    proc = cli_process("run", PRESET, "--events", os.devnull, "--settings", str(path), "--dry-run", cwd=tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    assert SECRET not in err
    assert err == f"signal-engine: no events: --events {os.devnull} is empty\n"


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://[::1", "is not a valid URL"),
        ("https://api.outreach.io:99999", "has an invalid port"),
        ("https://api.outreach.io:0", "has an invalid port"),
        ("https://api.outreach.io:https", "has an invalid port"),
    ],
)
def test_an_unparsable_base_url_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, reason: str
) -> None:
    assert (check_url(url) or "").startswith(reason)
    path = write_settings(tmp_path, f'client_id: cid\nbase_url: "{url}"\n')
    code = main(["run", PRESET, "--events", os.devnull, "--settings", str(path), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith(f"{path}:2: setting 'base_url' {reason}")
    assert len(captured.err.splitlines()) == 1
    assert "internal error" not in captured.err


def test_bad_port_in_a_subprocess_never_reaches_delivery(tmp_path: Path) -> None:
    path = write_settings(
        tmp_path,
        f"client_id: cid\nclient_secret: {SECRET}\nrefresh_token: rt-123456789\n"
        'base_url: "https://api.outreach.io:99999"\n',
    )
    events = tmp_path / "events.ndjson"
    events.write_text(lead("m1") + "\n", encoding="utf-8")
    proc = cli_process(
        "run",
        PRESET,
        "--events",
        str(events),
        "--settings",
        str(path),
        "--state",
        str(tmp_path / "state"),
        cwd=tmp_path,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert err == f"{path}:4: setting 'base_url' has an invalid port (it must be a number from 1 to 65535)\n"
    assert SECRET not in err


def test_a_text_stdin_without_a_byte_buffer_is_read_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lead("m1") + "\n{oops\n" + lead("m2") + "\n"))
    code = main(["run", PRESET, "--events", "-", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    outcomes = [json.loads(line) for line in captured.out.splitlines()]
    assert summary(outcomes) == [(0, "m1", "would_send"), (1, None, "invalid_event"), (2, "m2", "would_send")]
