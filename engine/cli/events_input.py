"""Reading ``--events``: newline-delimited JSON, one event per line.

Each line is decoded and parsed on its own, so one bad line becomes one
``invalid_event`` and the lines around it are read as usual. A line longer
than ``max_bytes`` is never held in memory: its bytes are counted and
skipped, and it becomes one ``invalid_event`` too.
"""

from __future__ import annotations

import codecs
import io
import json
import math
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from typing import IO, Any, cast

from .common import UsageError

# The longest event line read (UTF-8 bytes, without its line ending): `run --max-event-bytes`.
DEFAULT_MAX_EVENT_BYTES = 1 << 20
_JSON_WHITESPACE = b" \t\r\n"

# orjson reads a well-formed line about 3x faster than json. It turns an
# integer beyond 64 bits into a float, though, so a line holding a run of
# 19 or more digits goes to json, which keeps the integer. So does any line
# orjson refuses: json then decides, and names the problem as it always has
# (a number that overflows a double included).
# The one exception is nesting beyond orjson's 1,024 levels: json's limit
# would depend on the interpreter's recursion limit at that moment.
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_NUMBER = b"0" * 19


class OversizedLine:
    """Stands for a line longer than the limit; only its length was kept."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __repr__(self) -> str:
        return f"OversizedLine({self.size})"


RawLine = bytes | OversizedLine


def read_events(path: str, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Iterator[tuple[int, Any, str | None]]:
    """(index, event, problem) per non-blank line; index is the 0-based line number.

    A line that is not UTF-8 or not JSON yields a problem for that line only;
    the lines around it are read as usual. Only an unopenable or unreadable
    file stops the stream (with a :class:`UsageError`).
    """
    yield from events_from(open_events(path), path, max_bytes)


def open_events(path: str) -> IO[bytes]:
    """The byte stream behind ``--events``; ``-`` is standard input.

    Files and a real standard input are read unbuffered (one ``read`` call
    each time): the reader thread may still be waiting on a pipe when a
    stopped run exits, and a buffered reader's lock held there would abort
    the interpreter's shutdown.
    """
    if path == "-":
        stdin = sys.stdin
        if stdin is None:
            raise UsageError("--events -: there is no standard input")
        try:
            return io.FileIO(stdin.fileno(), "rb", closefd=False)
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both: a replaced stdin
            # A replaced stdin with no buffer is a byte stream itself.
            return cast(IO[bytes], getattr(stdin, "buffer", stdin))
    try:
        return open(path, "rb", buffering=0)
    except OSError as exc:
        raise UsageError(f"--events {path}: cannot open: {exc.strerror or exc}") from None


def is_regular_file(stream: IO[Any]) -> bool:
    """True for a file on disk (read to its end at once), False for a pipe, a terminal or a socket."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):  # io.UnsupportedOperation is both
        return False


def events_from(
    stream: IO[Any], path: str, max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> Iterator[tuple[int, Any, str | None]]:
    """Decode and parse each line on its own, so one bad line cannot spoil the others."""
    try:
        index = 0
        for lines in raw_line_chunks(stream, max_bytes=max_bytes):
            for raw in lines:
                item = parse_line(index, raw, max_bytes)
                index += 1
                if item is not None:
                    yield item
    except OSError as exc:
        raise UsageError(f"--events {path}: cannot read: {exc.strerror or exc}") from None
    finally:
        if path != "-":
            stream.close()


def parse_line(
    index: int, raw: RawLine, max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> tuple[int, Any, str | None] | None:
    """``(index, event, problem)`` for one line without its ending; None for a blank line.

    Blank means JSON whitespace only (space, tab, CR, LF): any other line,
    even one of invisible characters, is an event or an ``invalid_event``.
    """
    if isinstance(raw, OversizedLine):
        return index, None, _too_long(index, raw.size, max_bytes)
    if index == 0 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    if not raw.strip(_JSON_WHITESPACE):
        return None
    if len(raw) > max_bytes:  # a line that arrived whole (a text stream)
        return index, None, _too_long(index, len(raw), max_bytes)
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return index, _orjson_loads(raw), None
        except ValueError as exc:  # orjson.JSONDecodeError
            if str(getattr(exc, "msg", "")).startswith(
                "depth limit"
            ):  # a fixed limit, where json's would move with sys.getrecursionlimit()
                return index, None, f"line {index + 1}: not valid JSON: nested too deeply"
            # Not UTF-8, not JSON, NaN, 1e400, a lone surrogate...: read it below.
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[: exc.start].decode("utf-8", "replace")) + 1
        return index, None, f"line {index + 1}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})"
    try:
        event = json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        return index, None, f"line {index + 1}: not valid JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return index, None, f"line {index + 1}: not valid JSON: nested too deeply"
    except _OutOfRange as exc:
        return index, None, f"line {index + 1}: {exc}"
    except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
        return index, None, f"line {index + 1}: not valid JSON: {_json_value_error(exc)}"
    return index, event, None


def _too_long(index: int, size: int, max_bytes: int) -> str:
    return (
        f"line {index + 1}: {size:,} bytes, longer than the {max_bytes:,}-byte limit for one event "
        "(--max-event-bytes); not read"
    )


class _OutOfRange(ValueError):
    """A JSON number no double can hold: it would turn into infinity."""


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise _OutOfRange(f"the number {shown} is out of range (it overflows a double)")
    return value


def raw_line_chunks(
    stream: IO[Any], size: int = 65536, max_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> Iterator[list[RawLine]]:
    """Lines without their endings, in lists of whatever one read returned.

    ``read1`` returns as soon as any bytes are there, so a line written to a
    live pipe is handed on at once, while a file is read 64 KB at a time.
    CR, LF and CRLF all end a line. A line longer than ``max_bytes`` comes
    out as an :class:`OversizedLine`: past the limit its bytes are counted,
    not kept, so memory stays bounded whatever the input holds.
    """
    read = getattr(stream, "read1", None) or (stream.read if isinstance(stream, io.RawIOBase) else None)
    if read is None:  # a text stream without a byte buffer: line by line
        for raw in _byte_lines(stream):
            yield [raw]
        return
    parts: list[bytes] = []  # the unfinished line, while it is within the limit
    held = 0  # its length so far (also counted once its bytes are dropped)
    pending_cr = False
    while True:
        chunk = read(size)
        if chunk is None:  # a non-blocking descriptor with nothing to read yet
            time.sleep(0.01)
            continue
        if not chunk:
            break
        if isinstance(chunk, str):
            chunk = _to_bytes(chunk)
        if pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two reads
        pending_cr = chunk.endswith(b"\r")
        pieces = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        last = pieces.pop()
        lines: list[RawLine] = []
        for piece in pieces:  # each ends a line
            held += len(piece)
            if held > max_bytes:
                lines.append(OversizedLine(held))
            else:
                lines.append(b"".join(parts) + piece if parts else piece)
            parts, held = [], 0
        held += len(last)
        if held <= max_bytes:
            if last:
                parts.append(last)
        elif parts:
            parts = []  # over the limit: from here on only the length is kept
        if lines:
            yield lines
    if held > max_bytes:
        yield [OversizedLine(held)]
    elif parts:
        yield [b"".join(parts)]


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; Python accepts them, the destination would not."""
    raise ValueError(f"{name} is not a JSON number")


def _byte_lines(stream: IO[Any]) -> Iterator[bytes]:
    """Lines without their line ending; CR, LF and CRLF all end a line, as in text mode."""
    for chunk in stream:
        if isinstance(chunk, str):  # a text stream without a byte buffer (an embedding host's StringIO)
            chunk = _to_bytes(chunk)
        if chunk.endswith(b"\n"):
            chunk = chunk[:-1]
        if b"\r" not in chunk:
            yield chunk
            continue
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
        yield from chunk.split(b"\r")


def _to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # undoes a surrogateescape decode
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")  # then reported as not UTF-8


def _json_value_error(exc: ValueError) -> str:
    digits = re.search(r"\(\s*(\d+)\s*digits\)", str(exc))
    if "integer string conversion" in str(exc) and digits:
        return f"a number has more than {digits.group(1)} digits"
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _orjson_loads(raw: Any) -> Any:
    """orjson.loads, imported by the first call: orjson's import (with uuid and platform) costs
    several milliseconds that a run over an empty input, or a command that reads no events, need not pay. The first call puts orjson's own function in this one's place."""
    global _orjson_loads
    import orjson

    _orjson_loads = orjson.loads  # type: ignore[assignment]
    return orjson.loads(raw)
