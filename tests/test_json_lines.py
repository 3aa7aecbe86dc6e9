"""Event lines in, outcome lines out: the fast JSON paths read and write exactly what json would.

Lines are parsed with orjson when it can be trusted and with json otherwise;
outcomes are written with orjson, falling back to json for what orjson
refuses. Whichever path a line takes, the event and the outcome line must be
the ones json gives (as parsed values), valid JSON and valid UTF-8.
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import events_input
from engine.cli.common import emit, outcome_line
from engine.outcome import Outcome

REPO_ROOT = Path(__file__).resolve().parents[1]

# Lines whose reading is pinned by json's own behaviour.
LINES = [
    '{"type": "track", "event": "Signed Up", "userId": "u1"}',
    '  {"a": 1}  ',
    '{"a": 1, "a": 2, "b": 3}',
    '{"n": 123456789012345678901234567890}',
    '{"n": -9223372036854775809, "m": 18446744073709551616, "k": 18446744073709551615}',
    '{"id": "1234567890123456789012", "n": 1}',
    '{"f": 0.1, "g": -0.0, "h": 1e16, "i": 5e-324, "j": 1.7976931348623157e308, "k": 0.30000000000000004}',
    '{"s": "\\ud83d\\ude00 Zoë \\u0000 \\t"}',
    '{"lone": "Bo\\ud800b"}',
    '{"\u00e9": [1, 2.5, true, false, null, {}, []]}',
    "[1, 2]",
    '"just a string"',
    "12",
]
BAD_LINES = [  # (line, what the problem says)
    ('{"x": NaN}', "NaN is not a JSON number"),
    ('{"x": -Infinity}', "-Infinity is not a JSON number"),
    ('{"x": 1,}', "json's own message"),
    ("{oops", "json's own message"),
    ("[" * 1100 + "]" * 1100, "not valid JSON: nested too deeply"),
    ("[" * 20000 + "]" * 20000, "not valid JSON: nested too deeply"),
    ('{"big": 1E400}', "the number 1E400 is out of range (it overflows a double)"),  # json would read infinity
]


def read(lines: list[str]) -> list[tuple[int, Any, str | None]]:
    data = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"
    return list(events_input.events_from(io.BytesIO(data), "test"))


def exact(value: Any) -> Any:
    """A form in which 1 and 1.0 (and -0.0 and 0.0) differ, as they do in the engine's output."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [exact(v) for v in value]
    return value


def test_each_line_reads_as_json_reads_it() -> None:
    items = read(LINES)
    assert [index for index, _, _ in items] == list(range(len(LINES)))
    for (_, event, problem), line in zip(items, LINES, strict=True):
        assert problem is None, line
        assert exact(event) == exact(json.loads(line)), line


def test_integers_beyond_64_bits_stay_integers() -> None:
    ((_, event, _),) = read(['{"n": 123456789012345678901234567890, "m": -9223372036854775809}'])
    assert event == {"n": 123456789012345678901234567890, "m": -9223372036854775809}
    assert isinstance(event["n"], int) and isinstance(event["m"], int)


@pytest.mark.parametrize("line, problem", BAD_LINES, ids=[line[:12] for line, _ in BAD_LINES])
def test_a_bad_line_is_named_as_before(line: str, problem: str) -> None:
    items = read(['{"ok": 1}', line, '{"ok": 2}'])
    assert [(i, e) for i, e, _ in items] == [(0, {"ok": 1}), (1, None), (2, {"ok": 2})]
    assert items[1][2] is not None and items[1][2].startswith("line 2: ")
    if problem == "json's own message":
        with pytest.raises(json.JSONDecodeError) as info:
            json.loads(line)
        problem = f"not valid JSON: {info.value.msg} at column {info.value.colno}"
    assert problem in items[1][2]


def test_blank_lines_bom_and_line_endings() -> None:
    data = b"\xef\xbb\xbf" + b'{"a": 1}\r\n\r\n  \n{"b": 2}\r{"c": 3}\n\xff\n'
    items = list(events_input.events_from(io.BytesIO(data), "test"))
    assert items == [
        (0, {"a": 1}, None),
        (3, {"b": 2}, None),
        (4, {"c": 3}, None),
        (5, None, "line 6: not UTF-8 text (byte 0xff at column 1)"),
    ]


# --------------------------------------------------------------------------
# outcome lines
# --------------------------------------------------------------------------


ODD_BODIES = [
    {"name": "Zoë 😀", "n": 1, "f": 2.5, "ok": True, "none": None},
    {"lone": "Bo\ud800b"},
    {"huge": 123456789012345678901234567890},
    {"nan": math.nan, "inf": math.inf, "lone": "\udc80"},
    {"nan": math.nan, "list": [math.inf, -math.inf, 1.0]},
]


@pytest.mark.parametrize("body", ODD_BODIES, ids=range(len(ODD_BODIES)))
def test_every_outcome_line_is_one_line_of_valid_json_and_utf8(body: dict[str, Any]) -> None:
    outcome = Outcome(7, "m-1", "would_send", request={"method": "POST", "url": "u", "headers": {}, "body": body})
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
    emit(outcome, out)
    text = raw.getvalue().decode("utf-8")  # strict: valid UTF-8
    assert text.endswith("\n") and text.count("\n") == 1
    parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in an outcome line"))
    expected = json.loads(json.dumps(body, allow_nan=True), parse_constant=lambda name: None)
    assert parsed["request"]["body"] == expected
    assert list(parsed) == ["index", "messageId", "outcome", "request"]


def test_outcome_lines_keep_non_ascii_characters_as_they_are() -> None:
    line = outcome_line({"detail": "Zoë 😀"})
    assert line == '{"detail":"Zoë 😀"}\n'


# --------------------------------------------------------------------------
# flushing: a live stream sees each outcome at once
# --------------------------------------------------------------------------


def lead(message_id: str) -> str:
    return json.dumps(
        {
            "type": "track",
            "event": "Signed Up",
            "userId": "u-" + message_id,
            "messageId": message_id,
            "traits": {"email": f"{message_id}@example.com"},
            "context": {"consent": {"canonical": {"marketing": True}}},
        }
    )


def test_is_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text("{}\n", encoding="utf-8")
    with open(path, "rb") as stream:
        assert events_input.is_regular_file(stream)
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stream, os.fdopen(write_end, "wb"):
        assert not events_input.is_regular_file(stream)
    assert not events_input.is_regular_file(io.BytesIO(b""))


def child_env() -> dict[str, str]:
    """A buffered stdout, as users have it: flushing must be the engine's doing."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def test_a_live_stream_gets_each_outcome_before_the_next_line_arrives(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", "outreach/lead-capture", "--events", "-", "--dry-run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=child_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for message_id in ("m1", "m2"):
            proc.stdin.write((lead(message_id) + "\n").encode())
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, f"no outcome for {message_id} while the input stayed open"
            outcome = json.loads(proc.stdout.readline())
            assert (outcome["messageId"], outcome["outcome"]) == (message_id, "would_send")
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == 0


def test_the_nesting_limit_does_not_move_with_the_recursion_limit() -> None:
    line = "[" * 1100 + "]" * 1100
    for limit in (1000, 20000):
        previous = sys.getrecursionlimit()
        sys.setrecursionlimit(limit)
        try:
            ((_, event, problem),) = read([line])
        finally:
            sys.setrecursionlimit(previous)
        assert event is None and problem == "line 1: not valid JSON: nested too deeply"
