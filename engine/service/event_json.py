"""JSON from outside the process, made safe to queue, deliver and print: bounded depth, no lone surrogates.

Two things a JSON parser accepts break what comes after it:

* **Depth.** Python's parser raises ``RecursionError`` a few thousand levels
  down, and the pipeline, the JSONata engine and the request encoder each
  have a lower limit of their own. So a body deeper than :data:`MAX_DEPTH`
  is refused at the door (a 400) and a queue entry deeper than that becomes
  an ``invalid_event``, instead of failing somewhere later.
* **Lone surrogates.** ``"\\ud800"`` is valid JSON but not Unicode text: UTF-8
  (SQLite, Redis, stdout, every destination) cannot carry it, so it would
  fail the queue write, the outcome line or the acknowledgement. It is kept
  visible instead: each lone surrogate becomes the six characters ``\\ud800``
  (the text a reader of the outcome sees, and what a browser's
  ``JSON.stringify`` sends for a truncated emoji). The rest of the event is
  untouched, so a lead whose comment was cut mid-emoji is still a lead.

**Cheap when nothing is wrong.** orjson parses first: it refuses lone
surrogates, NaN, Infinity and numbers out of range by itself, and whatever
it refuses (or cannot read exactly: an integer of 20 digits or more, which
it would turn into a float) is parsed again the slow way, which gives the
same value and the same one-line error as always. The depth of what orjson
took is read from the text's brackets (strings taken out), a few passes of
``bytes.replace`` in C instead of a walk of every value in Python.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

MAX_DEPTH = 64  # containers inside containers; real events use a handful

# A lone surrogate can only come from a \uD8xx..\uDFxx escape, or from bytes decoded with "surrogatepass".
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# orjson reads integers beyond 64 bits as floats: a run of this many digits goes the slow, exact way.
_LONG_DIGITS = b"0" * 20
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'"[]{}')
_UNSURE = object()
_COUNTED_UP_TO = 4096  # bytes; a longer body's depth is read from its brackets without counting them first


class EventJsonError(ValueError):
    """Why a text is not an event body we take: one line naming the problem, to follow its subject ("the body …")."""


def loads(text: str | bytes) -> Any:
    """Parse JSON, refusing what only breaks later: too deep, a number out of range, NaN or Infinity.

    Bytes that are not UTF-8 raise ``UnicodeDecodeError`` (its ``start`` names the byte).
    """
    value = _fast_loads(text)
    if value is not _UNSURE:
        return value
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise EventJsonError(f"is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise EventJsonError(f"is not JSON: {exc}") from None
    return clean(value, _may_hold_surrogate(text))


def _fast_loads(data: str | bytes) -> Any:
    """orjson's value, its depth checked; ``_UNSURE`` when only the slow path can tell (or refuse) exactly."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if _LONG_DIGITS in raw.translate(_DIGITS_AS_ZERO):
        return _UNSURE
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNSURE
    # Fewer brackets than MAX_DEPTH cannot nest too deep; a batch has hundreds, so counting them is spared.
    if len(raw) > _COUNTED_UP_TO or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        depth = _text_depth(raw)
        if depth is None:
            _check_depth(value)
        elif depth > MAX_DEPTH:
            raise EventJsonError(f"is nested more than {MAX_DEPTH} levels deep")
    return value


def _text_depth(raw: bytes) -> int | None:
    """How deep the containers of valid JSON ``raw`` nest, up to MAX_DEPTH + 1; None if a string holds a bracket.

    Escaped backslashes and quotes go first (JSON reads escapes left to right, as ``replace`` does), then
    everything but quotes and brackets; each string is then a pair of adjacent quotes, unless it held a
    bracket (a quote is left over: the caller walks the value instead). What is left is brackets alone,
    and each pass of ``replace("[]")`` takes away the innermost level. Correctness rests on the left-over
    quote, not on the escapes: quotes paired wrongly around a bracket leave one over too (a walk, not a miss).
    """
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = raw.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in shape:
        return None
    depth = 0
    while shape and depth <= MAX_DEPTH:
        shape = shape.replace(b"[]", b"")
        depth += 1
    return depth


def clean(value: Any, surrogates: bool = True) -> Any:
    """``value`` with every lone surrogate escaped (when ``surrogates``); refused when deeper than MAX_DEPTH.

    Iterative, so a deep value cannot exhaust the interpreter's stack here.
    """
    _check_depth(value)
    if not surrogates:
        return value
    if isinstance(value, str):
        return _escape(value)
    stack: list[Any] = [value] if isinstance(value, (dict, list)) else []
    while stack:
        container = stack.pop()
        if isinstance(container, dict):
            if any(isinstance(k, str) and _SURROGATE.search(k) for k in container):
                items = [(_escape(k), v) for k, v in container.items()]
                container.clear()
                container.update(items)
            for key, item in container.items():
                if isinstance(item, (dict, list)):
                    stack.append(item)
                elif isinstance(item, str):
                    container[key] = _escape(item)
        else:
            for i, item in enumerate(container):
                if isinstance(item, (dict, list)):
                    stack.append(item)
                elif isinstance(item, str):
                    container[i] = _escape(item)
    return value


def _check_depth(value: Any) -> None:
    """Level by level, containers only: about a third of what parsing the text cost."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            raise EventJsonError(f"is nested more than {MAX_DEPTH} levels deep")
        below: list[Any] = []
        for container in level:
            below += [
                item
                for item in (container.values() if type(container) is dict else container)
                if type(item) is dict or type(item) is list
            ]
        level = below
        depth += 1


def _may_hold_surrogate(text: str) -> bool:
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        return True
    return not text.isascii() and _SURROGATE.search(text) is not None


def _escape(text: str) -> str:
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


__all__ = ["MAX_DEPTH", "EventJsonError", "clean", "loads"]
