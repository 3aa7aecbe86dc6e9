"""Reading ``--events``: newline-delimited JSON, one event per line.

Each line is decoded and parsed on its own, so one bad line becomes one
``invalid_event`` and the lines around it are read as usual.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
import sys
from typing import IO, Any, Iterator

import orjson

from .common import UsageError

# orjson reads a well-formed line about 3x faster than json. It turns an
# integer beyond 64 bits into a float, though, so a line holding a run of
# 19 or more digits goes to json, which keeps the integer. So does any line
# orjson refuses: json then decides, and names the problem as it always has.
# The one exception is nesting beyond orjson's 1,024 levels: json's limit
# would depend on the interpreter's recursion limit at that moment.
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_NUMBER = b"0" * 19


def read_events(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(index, event, problem) per non-blank line; index is the 0-based line number.

    A line that is not UTF-8 or not JSON yields a problem for that line only;
    the lines around it are read as usual. Only an unopenable or unreadable
    file stops the stream (with a :class:`UsageError`).
    """
    yield from events_from(open_events(path), path)


def open_events(path: str) -> IO[bytes]:
    """The byte stream behind ``--events``; ``-`` is standard input."""
    if path == "-":
        stdin = sys.stdin
        if stdin is None:
            raise UsageError("--events -: there is no standard input")
        return getattr(stdin, "buffer", stdin)
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by _events_from
    except OSError as exc:
        raise UsageError(f"--events {path}: cannot open: {exc.strerror or exc}") from None


def is_regular_file(stream: IO[Any]) -> bool:
    """True for a file on disk (read to its end at once), False for a pipe, a terminal or a socket."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):  # io.UnsupportedOperation is both
        return False


def events_from(stream: IO[Any], path: str) -> Iterator[tuple[int, Any, str | None]]:
    """Decode and parse each line on its own, so one bad line cannot spoil the others."""
    try:
        for index, raw in enumerate(_byte_lines(stream)):
            if index == 0 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
                try:
                    fast = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    if exc.msg.startswith("depth limit"):  # a fixed limit, where json's would move with sys.getrecursionlimit()
                        yield index, None, f"line {index + 1}: not valid JSON: nested too deeply"
                        continue
                    # Not UTF-8, not JSON, NaN, a lone surrogate, a blank line...: read it below.
                else:
                    yield index, fast, None
                    continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(raw[:exc.start].decode("utf-8", "replace")) + 1
                yield index, None, (f"line {index + 1}: not UTF-8 text "
                                    f"(byte 0x{raw[exc.start]:02x} at column {column})")
                continue
            if not line.strip():
                continue
            try:
                event = json.loads(line, parse_constant=_reject_constant)
            except json.JSONDecodeError as exc:
                yield index, None, f"line {index + 1}: not valid JSON: {exc.msg} at column {exc.colno}"
            except RecursionError:
                yield index, None, f"line {index + 1}: not valid JSON: nested too deeply"
            except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
                yield index, None, f"line {index + 1}: not valid JSON: {_json_value_error(exc)}"
            else:
                yield index, event, None
    except OSError as exc:
        raise UsageError(f"--events {path}: cannot read: {exc.strerror or exc}") from None
    finally:
        if path != "-":
            stream.close()


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
