"""One hint when ``--events`` is clearly not NDJSON.

A pretty-printed JSON array is the usual mistake: every line of it is an
``invalid_event``, and hundreds of those say less than one line naming the
format and how to convert it. The lines still get their outcomes; the hint
only explains them.
"""

from __future__ import annotations

from typing import Any


def ndjson_hint(source: str, first_line: bytes | None, first_event: Any, first_problem: str | None) -> str | None:
    """The hint for an input whose first event line is not a JSON object, or None."""
    if first_problem is None and isinstance(first_event, dict):
        return None
    target = "FILE" if source == "-" else _quote(source)
    if first_line is not None and first_line.startswith(b"["):
        what = "it holds a JSON array"
        convert = f"jq -c '.[]' {target} > events.ndjson"
    else:
        what = "its first line is not a JSON object"
        convert = f"jq -c . {target} > events.ndjson"
    return (
        f"signal-engine: hint: --events {source}: {what}; NDJSON is expected, one JSON object per line. "
        f"Convert it with: {convert}"
    )


def _quote(path: str) -> str:
    safe = all(c.isalnum() or c in "._-/+@%=:," for c in path)
    return path if safe else "'" + path.replace("'", "'\\''") + "'"
