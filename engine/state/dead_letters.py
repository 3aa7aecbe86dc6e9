"""Dead letters: events that could not be delivered, kept for replay.

Nothing is lost: an event whose retries ran out, or that waits on a
re-authorisation, is written here with the masked request, the last
response, the cause and the attempt count. The request body is kept whole
(it holds no credentials; the auth header is masked and re-applied on
replay).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Protocol

from ..outcome import Outcome


class DeadLetterStore(Protocol):
    def append(self, entry: dict[str, Any]) -> None: ...
    def entries(self) -> list[dict[str, Any]]: ...
    def replace(self, entries: Iterable[dict[str, Any]]) -> None: ...


def entry_for(preset: str, action: str, outcome: Outcome, request: dict[str, Any]) -> dict[str, Any]:
    """``request`` is the event's *first* request (masked), not the last one tried: a
    replay must start from the create, so that an upsert runs whole again."""
    return {
        "id": uuid.uuid4().hex,
        "preset": preset,
        "action": action,
        "dead_lettered_at": int(time.time()),
        "index": outcome.index,
        "messageId": outcome.message_id,
        "cause": outcome.cause,
        "detail": outcome.detail,
        "attempts": outcome.attempts,
        "request": request,
        "last_request": outcome.request,
        "last_response": outcome.response,
    }


class FileDeadLetters:
    """JSON lines, one file per preset, 0600 (the bodies hold personal data)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def entries(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash must not block the rest
            if isinstance(item, dict):
                out.append(item)
        return out

    def replace(self, entries: Iterable[dict[str, Any]]) -> None:
        """Rewrite atomically, so a crash mid-replay keeps every letter."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".dlq-", dir=self.path.parent)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


class MemoryDeadLetters:
    def __init__(self) -> None:
        self._entries: list[dict[str, Any]] = []

    def append(self, entry: dict[str, Any]) -> None:
        self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def replace(self, entries: Iterable[dict[str, Any]]) -> None:
        self._entries = list(entries)
