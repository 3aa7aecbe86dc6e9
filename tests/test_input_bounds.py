"""Bounded input: what a hostile or broken event line can cost, and that every line gets its outcome.

* a line over ``--max-event-bytes`` (1 MiB by default) is one ``invalid_event``
  and is never held in memory;
* a line of JSON whitespace only is blank (no outcome); any other line, even
  one of invisible characters, gets an outcome;
* a number no double can hold (``1e400``) is ``invalid_event``;
* an email with a control, zero-width or bidirectional character, or over
  254 bytes (RFC 5321), is ``invalid_email``;
* outcome lines are valid UTF-8 whatever the locale or output encoding.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import events_input, main
from engine.cli.events_input import OversizedLine, raw_line_chunks

PRESET = "outreach/lead-capture"
REPO = Path(__file__).resolve().parents[1]


def lead(message_id: str, email: str | None = None, first_name: str = "Jane") -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Demo Requested",
        "userId": "u-" + message_id,
        "messageId": message_id,
        "traits": {"email": email if email is not None else f"{message_id}@acme.com", "firstName": first_name},
        "context": {"consent": {"canonical": {"marketing": True}}},
    }


def line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode("utf-8")


def dry_run(capsys: pytest.CaptureFixture[str], data: bytes, tmp_path: Path, *options: str) -> list[dict[str, Any]]:
    events = tmp_path / "events.ndjson"
    events.write_bytes(data)
    code = main(["run", PRESET, "--events", str(events), "--dry-run", *options])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert code in (0, 1), captured.err
    return [json.loads(text) for text in captured.out.splitlines()]


def shape(outcomes: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(o["index"], o.get("reason") or o["outcome"]) for o in outcomes]


# --------------------------------------------------------------------------
# line size
# --------------------------------------------------------------------------


def test_a_line_over_the_limit_is_one_invalid_event_and_its_neighbours_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = lead("big", first_name="x" * 5000)
    data = b"\n".join([line(lead("m0")), line(big), line(lead("m2")), b""])
    outcomes = dry_run(capsys, data, tmp_path, "--max-event-bytes", "4096")
    assert shape(outcomes) == [(0, "would_send"), (1, "invalid_event"), (2, "would_send")]
    size = len(line(big))
    assert outcomes[1]["detail"] == (
        f"line 2: {size:,} bytes, longer than the 4,096-byte limit for one event (--max-event-bytes); not read"
    )
    assert outcomes[1]["messageId"] is None  # the line was not parsed


def test_the_default_limit_is_one_mebibyte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def padded(message_id: str, size: int) -> bytes:
        event = {**lead(message_id), "properties": {"blob": ""}}  # the mapping never reads it
        event["properties"]["blob"] = "y" * (size - len(line(event)))
        return line(event)

    fits, over = padded("fits", 1024 * 1024), padded("over", 1024 * 1024 + 1)
    assert (len(fits), len(over)) == (1024 * 1024, 1024 * 1024 + 1)
    outcomes = dry_run(capsys, fits + b"\n" + over + b"\n", tmp_path)
    assert shape(outcomes) == [(0, "would_send"), (1, "invalid_event")]
    assert "longer than the 1,048,576-byte limit" in outcomes[1]["detail"]


def test_line_ends_and_the_limit_hold_across_read_boundaries() -> None:
    data = b"ab\r\ncdefgh\rij\n\nklmnopqrstu\r\nvw"
    for size in (1, 2, 3, 5, 7, 64):
        got = [
            item.size if isinstance(item, OversizedLine) else item
            for chunk in raw_line_chunks(io.BytesIO(data), size=size, max_bytes=6)
            for item in chunk
        ]
        assert got == [b"ab", b"cdefgh", b"ij", b"", 11, b"vw"], size
    # an over-long last line without a line ending
    got = [item for chunk in raw_line_chunks(io.BytesIO(b"ok\n" + b"z" * 20), size=4, max_bytes=6) for item in chunk]
    assert got[0] == b"ok" and isinstance(got[1], OversizedLine) and got[1].size == 20


def test_an_over_long_line_on_a_text_stream_is_refused_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = json.dumps(lead("m0")) + "\n" + json.dumps(lead("m1", first_name="q" * 3000)) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert main(["run", PRESET, "--events", "-", "--dry-run", "--max-event-bytes", "2000"]) == 0
    outcomes = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert shape(outcomes) == [(0, "would_send"), (1, "invalid_event")]


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "lots"])
def test_a_bad_limit_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", PRESET, "--events", "-", "--dry-run", "--max-event-bytes", value])
    assert exited.value.code == 2
    assert "--max-event-bytes" in capsys.readouterr().err


def test_a_20_mb_line_costs_no_more_memory_than_a_small_file(tmp_path: Path) -> None:
    """Peak memory of the whole process, measured by the kernel, compared with a run of small lines."""
    small = tmp_path / "small.ndjson"
    small.write_bytes(line(lead("m0")) + b"\n" + line(lead("m1")) + b"\n")
    huge = tmp_path / "huge.ndjson"
    with huge.open("wb") as handle:
        handle.write(line(lead("m0")) + b"\n")
        handle.write(b'{"type": "track", "event": "Demo Requested", "properties": {"blob": "')
        for _ in range(20):
            handle.write(b"x" * (1 << 20))
        handle.write(b'"}}\n')
        handle.write(line(lead("m1")) + b"\n")

    def peak(events: Path) -> tuple[int, list[dict[str, Any]]]:
        code = (
            "import resource, subprocess, sys; "
            "p = subprocess.run([sys.executable, '-m', 'engine', 'run', 'outreach/lead-capture', '--events', "
            f"{str(events)!r}, '--dry-run'], capture_output=True); "
            "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n'); "
            "sys.stdout.buffer.write(p.stdout)"
        )
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
        first, _, rest = done.stdout.partition(b"\n")
        return int(first), [json.loads(text) for text in rest.splitlines()]

    base, small_out = peak(small)
    big, huge_out = peak(huge)
    assert shape(small_out) == [(0, "would_send"), (1, "would_send")]
    assert shape(huge_out) == [(0, "would_send"), (1, "invalid_event"), (2, "would_send")]
    # Reading it whole would cost 20 MB for the bytes alone (and about 80x that parsed).
    assert big - base < 8 * 1024, f"peak RSS grew by {big - base} KiB for a 20 MB line"


# --------------------------------------------------------------------------
# blank lines and invisible characters
# --------------------------------------------------------------------------


def test_only_json_whitespace_is_blank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    odd = [b"\x1c", "\u2028".encode(), b"\x0b", b"\x0c", "\u00a0".encode(), "\ufeff".encode(), b"\x00", b" \x1f "]
    data = b"\n".join([line(lead("m0")), b"", b"  \t ", *odd, line(lead("m1")), b""])
    outcomes = dry_run(capsys, data, tmp_path)
    expected = (
        [(0, "would_send")] + [(3 + i, "invalid_event") for i in range(len(odd))] + [(3 + len(odd), "would_send")]
    )
    assert shape(outcomes) == expected
    assert all(o["detail"].startswith(f"line {o['index'] + 1}: not valid JSON") for o in outcomes[1:-1])


def test_blank_lines_have_no_outcome_when_delivering_either() -> None:
    assert events_input.parse_line(3, b" \t\r ") is None
    assert events_input.parse_line(3, "\u2028".encode())[2].startswith("line 4: not valid JSON")  # type: ignore[index]
    assert events_input.parse_line(0, b"\xef\xbb\xbf  ") is None  # a BOM and spaces


# --------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.5e309", "123456789e999"])
def test_a_number_that_overflows_is_invalid_event(
    number: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = line(lead("m1")).replace(b'"messageId"', f'"properties": {{"score": [{number}]}}, "messageId"'.encode())
    outcomes = dry_run(capsys, line(lead("m0")) + b"\n" + bad + b"\n" + line(lead("m2")) + b"\n", tmp_path)
    assert shape(outcomes) == [(0, "would_send"), (1, "invalid_event"), (2, "would_send")]
    assert outcomes[1]["detail"] == f"line 2: the number {number} is out of range (it overflows a double)"


def test_numbers_a_double_holds_are_fine() -> None:
    _, event, problem = events_input.parse_line(0, b'{"a": 1e308, "b": 1e-400, "c": -0.0, "d": 12345678901234567890}')
    assert problem is None and event == {"a": 1e308, "b": 0.0, "c": -0.0, "d": 12345678901234567890}


# --------------------------------------------------------------------------
# emails
# --------------------------------------------------------------------------

HIDDEN = {
    "zero width space": "\u200b",
    "zero width joiner": "\u200d",
    "word joiner": "\u2060",
    "byte order mark": "\ufeff",
    "right-to-left override": "\u202e",
    "left-to-right isolate": "\u2066",
    "right-to-left mark": "\u200f",
    "arabic letter mark": "\u061c",
    "nul": "\x00",
    "escape": "\x1b",
    "delete": "\x7f",
    "next line": "\x85",
    "file separator": "\x1c",
    "line separator": "\u2028",
    "paragraph separator": "\u2029",
    "private use": "\ue000",
}


@pytest.mark.parametrize("where", ["inside", "at the end"])
@pytest.mark.parametrize("name", sorted(HIDDEN))
def test_an_email_with_a_hidden_or_control_character_is_invalid_email(
    name: str, where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    char = HIDDEN[name]
    address = f"ja{char}ne@acme.com" if where == "inside" else f"jane@acme.com{char}"
    outcomes = dry_run(capsys, line(lead("m0", address)) + b"\n", tmp_path)
    assert shape(outcomes) == [(0, "invalid_email")]
    assert f"U+{ord(char):04X}" in outcomes[0]["detail"]


def test_an_email_of_only_a_hidden_character_is_invalid_not_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = dry_run(capsys, line(lead("m0", "\u200b")) + b"\n" + line(lead("m1", " \t ")) + b"\n", tmp_path)
    assert shape(outcomes) == [(0, "invalid_email"), (1, "not_identified")]


def test_an_email_longer_than_254_bytes_is_invalid_email(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domain = "@" + "d" * 60 + "." + "e" * 60 + ".com"
    longest = "a" * (254 - len(domain)) + domain
    assert len(longest) == 254
    too_long = "a" + longest
    # Non-ASCII letters count by their UTF-8 bytes, as RFC 5321 counts octets.
    wide = "é" * ((254 - len(domain)) // 2 + 1) + domain
    assert len(wide) < 254 < len(wide.encode())
    data = b"\n".join(line(lead(f"m{i}", address)) for i, address in enumerate([longest, too_long, wide])) + b"\n"
    outcomes = dry_run(capsys, data, tmp_path)
    assert shape(outcomes) == [(0, "would_send"), (1, "invalid_email"), (2, "invalid_email")]
    assert outcomes[1]["detail"].endswith("255 bytes long, over the 254 an address may have")


def test_ordinary_whitespace_around_an_email_is_still_trimmed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = dry_run(
        capsys, line(lead("m0", "\t Jane@Acme.com \n")) + b"\n" + line(lead("m1", "Zoë@acme.com")) + b"\n", tmp_path
    )
    assert shape(outcomes) == [(0, "would_send"), (1, "would_send")]
    assert outcomes[0]["request"]["body"]["data"]["attributes"]["emails"] == ["jane@acme.com"]
    assert outcomes[1]["request"]["body"]["data"]["attributes"]["emails"] == ["zoë@acme.com"]


# --------------------------------------------------------------------------
# outcome lines are UTF-8
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"LC_ALL": "C", "LANG": "C"},
        {"PYTHONIOENCODING": "latin-1"},
        {"PYTHONIOENCODING": "utf-8:surrogateescape"},
        {"PYTHONIOENCODING": "utf-8"},
    ],
    ids=["C-locale", "latin-1", "surrogateescape", "utf-8"],
)
def test_outcome_lines_are_valid_utf8_whatever_the_output_encoding(env: dict[str, str], tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    # Each line holds one kind of character, so no line's encoding failure covers for another's:
    # a lone surrogate that surrogateescape would write as a raw byte (0xff), Latin-1 letters,
    # a character outside Latin-1, and a surrogate no error handler can write.
    events.write_bytes(
        b'{"type":"track","event":"Signed Up","messageId":"\\udcff"}\n'
        + line(lead("m-\u00e9", first_name="Zo\u00eb"))
        + b"\n"
        + line(lead("m-\u2603"))
        + b"\n"
        + b'{"type":"track","event":"Signed Up","messageId":"\\ud800"}\n'
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("LC_ALL", "LANG", "PYTHONIOENCODING", "PYTHONUTF8")}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", PRESET, "--events", str(events), "--dry-run"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        env={**clean, **env},
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode("utf-8")  # strict: raises on any byte that is not UTF-8
    outcomes = [json.loads(row) for row in text.splitlines()]
    assert [o["messageId"] for o in outcomes] == ["\udcff", "m-\u00e9", "m-\u2603", "\ud800"]
    assert outcomes[1]["request"]["body"]["data"]["attributes"]["firstName"] == "Zo\u00eb"


def test_an_email_is_trimmed_of_every_space_python_knows_but_not_of_separators() -> None:
    """The trimmed set is written out in the code; it must stay what str.isspace() means, less the separators."""
    from engine.pipeline.normalisers import _TRIMMED

    separators = "\x1c\x1d\x1e\x1f\x85\u2028\u2029"
    assert set(_TRIMMED) == {c for c in map(chr, range(0x110000)) if c.isspace()} - set(separators)


def test_a_file_is_handed_to_the_loop_in_batches_of_at_most_max_batch_lines_in_order(tmp_path: Path) -> None:
    """A delivering run reads a file on the loop (no reader thread): every line, in order, in bounded batches."""
    import asyncio

    from engine.cli.input_batches import MAX_BATCH, file_batches

    path = tmp_path / "events.ndjson"
    path.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(3 * MAX_BATCH + 7)))

    async def collect() -> list[list[Any]]:
        with path.open("rb") as stream:
            return [batch async for batch in file_batches(raw_line_chunks(stream, size=1000))]

    got = asyncio.run(collect())
    assert max(len(b) for b in got) == MAX_BATCH
    assert [line for batch in got for line in batch] == [b'{"n": %d}' % i for i in range(3 * MAX_BATCH + 7)]
