"""The delivery journal: which events were already delivered, so a restart does not send them again.

Keyed by preset and event key: the ``messageId``, or a hash of the whole
event when it has none (an identical re-send then has the same key). An
entry lives for the preset's ``delivery.dedupe_window_seconds``; older ones
are purged, so the journal holds at most one small fixed-size row per event
delivered within the window (and the rate limit bounds how many that is).

What the journal cannot know: a request that was on the wire when the
process died has no entry yet, so a restart sends it again. That is why the
presets that create records declare an upsert: the second create is merged
into the first, not duplicated.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from ..event_identity import message_id_of


def event_key(event: Any) -> str:
    """``m:<messageId>``, or ``h:<sha256 of the event as canonical JSON>`` when it has no messageId."""
    message_id = message_id_of(event)
    if message_id is not None:
        return f"m:{message_id}"
    text = json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return "h:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def key_digest(key: str) -> bytes:
    """A fixed 16-byte form of a key, so a huge messageId cannot make a huge row."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class DeliveryJournal(Protocol):
    """One preset's delivered events. Each call is atomic on its own."""

    def delivered_at(self, key: str) -> float | None:
        """When the event was delivered (epoch seconds), if within the window; else None."""

    def record(self, key: str, at: float | None = None) -> None:
        """Note that the event was delivered (now, or at ``at``). Durable against a killed process."""


class MemoryJournal:
    """For an engine without a state directory: duplicates are caught for the life of the process."""

    def __init__(self, window_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        self.window = window_seconds
        self._clock = clock
        self._delivered: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._delivered)

    def delivered_at(self, key: str) -> float | None:
        at = self._delivered.get(key_digest(key))
        if at is None or self._clock() - at > self.window:
            return None
        return at

    def record(self, key: str, at: float | None = None) -> None:
        if self.window <= 0:
            return
        now = self._clock()
        digest = key_digest(key)
        self._delivered.pop(digest, None)
        self._delivered[digest] = now if at is None else at
        # Oldest first: purge what fell out of the window, so memory is bounded by it.
        while self._delivered:
            first, when = next(iter(self._delivered.items()))
            if now - when <= self.window:
                break
            del self._delivered[first]
