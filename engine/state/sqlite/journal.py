"""The delivery journal in the state database.

A row is 16 bytes of key digest, the preset's number and a timestamp (about
70 bytes on disk with its indexes), so the journal's size is bounded by
(events delivered within the window) × 70 bytes. Rows older than the window
are purged in batches as new ones are written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..journal import key_digest
from .database import Database

PURGE_EVERY_SECONDS = 600.0
PURGE_BATCH = 10_000


class SqliteJournal:
    def __init__(
        self, db: Database, preset: str, window_seconds: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.window = window_seconds
        self.ns = db.namespace(preset)
        self._clock = clock
        self._next_purge = 0.0

    def delivered_at(self, key: str) -> float | None:
        if self.window <= 0:
            return None
        rows = self.db.read("SELECT delivered_at FROM journal WHERE ns = ? AND key = ?", (self.ns, key_digest(key)))
        if not rows or self._clock() - rows[0][0] > self.window:
            return None
        return float(rows[0][0])

    def record(self, key: str, at: float | None = None) -> None:
        self.record_many([(key, at)])

    def record_many(self, entries: Sequence[tuple[str, float | None]]) -> None:
        """Several deliveries (key, when or None for now) in one transaction: all of them or none."""
        if self.window <= 0:
            return
        now = self._clock()
        with self.db.write() as cur:
            cur.executemany(
                "INSERT OR REPLACE INTO journal (ns, key, delivered_at) VALUES (?, ?, ?)",
                [(self.ns, key_digest(key), now if at is None else at) for key, at in entries],
            )
            if now >= self._next_purge:
                gone = cur.execute(
                    "DELETE FROM journal WHERE ns = ? AND key IN (SELECT key FROM journal "
                    "WHERE ns = ? AND delivered_at < ? ORDER BY delivered_at LIMIT ?)",
                    (self.ns, self.ns, now - self.window, PURGE_BATCH),
                ).rowcount
                self._next_purge = now if gone == PURGE_BATCH else now + PURGE_EVERY_SECONDS

    def __len__(self) -> int:
        return int(self.db.read("SELECT COUNT(*) FROM journal WHERE ns = ?", (self.ns,))[0][0])
