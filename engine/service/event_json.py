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
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64  # containers inside containers; real events use a handful

# A lone surrogate can only come from a \uD8xx..\uDFxx escape, or from bytes decoded with "surrogatepass".
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class EventJsonError(ValueError):
    """Why a text is not an event body we take: one line naming the problem, to follow its subject ("the body …")."""


def loads(text: str) -> Any:
    """Parse JSON, refusing what only breaks later: too deep, a number out of range, NaN or Infinity."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise EventJsonError(f"is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise EventJsonError(f"is not JSON: {exc}") from None
    return clean(value, _may_hold_surrogate(text))


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
            below += [item for item in (container.values() if type(container) is dict else container)
                      if type(item) is dict or type(item) is list]
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


__all__ = ["MAX_DEPTH", "EventJsonError", "loads", "clean"]
