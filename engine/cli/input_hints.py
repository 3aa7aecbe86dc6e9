"""One hint when ``--events`` is clearly not NDJSON.

A pretty-printed JSON array is the usual mistake: every line of it is an
``invalid_event``, and hundreds of those say less than one line naming the
format and how to convert it. The lines still get their outcomes; the hint
only explains them.
"""

from __future__ import annotations

import codecs
from typing import IO, Any, Callable, Iterator


class FirstLine:
    """Wraps the byte stream behind ``--events`` and keeps its first non-blank line."""

    def __init__(self, stream: IO[Any]) -> None:
        self._stream = stream
        self.first: bytes | None = None

    def __iter__(self) -> Iterator[Any]:
        for chunk in self._stream:
            if self.first is None:
                raw = chunk.encode("utf-8", "surrogateescape") if isinstance(chunk, str) else chunk
                raw = raw.removeprefix(codecs.BOM_UTF8)
                if raw.strip():
                    self.first = raw.strip()
            yield chunk

    def close(self) -> None:
        self._stream.close()


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
    return (f"signal-engine: hint: --events {source}: {what}; NDJSON is expected, one JSON object per line. "
            f"Convert it with: {convert}")


def watch_first(items: Iterator[tuple[int, Any, str | None]], reader: FirstLine, source: str,
                warn: Callable[[str], None]) -> Iterator[tuple[int, Any, str | None]]:
    """Pass the parsed lines through; after the first one, ``warn`` once if the input is not NDJSON."""
    first = True
    for item in items:
        if first:
            first = False
            hint = ndjson_hint(source, reader.first, item[1], item[2])
            if hint:
                warn(hint)
        yield item


def _quote(path: str) -> str:
    safe = all(c.isalnum() or c in "._-/+@%=:," for c in path)
    return path if safe else "'" + path.replace("'", "'\\''") + "'"
