"""Identity memory in the state database: written through on every identify.

One row per (preset, id field, id). A lookup is one primary-key search, so
its cost does not depend on how many people are remembered. Bounds (see
:mod:`engine.state.identity`): rows not seen for ``ttl_seconds`` are never
returned and are purged in batches; past ``max_bytes`` the least recently
seen rows are deleted in the same transaction as the write that crossed it.

"Seen" is refreshed by an identify, and by a recall at most once per
``TOUCH_SECONDS``, so that a lead event's lookup stays a read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import StateError
from ..identity import (
    IdentityLimits,
    Remembered,
    Slot,
    entry_bytes,
    merged,
    traits_json,
)
from .database import Database

TOUCH_SECONDS = 3600.0
PURGE_EVERY_SECONDS = 3600.0
PURGE_BATCH = 10_000
EVICT_BATCH_MAX = 100_000


class SqliteIdentityStore:
    def __init__(
        self, db: Database, preset: str, limits: IdentityLimits | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.limits = limits or IdentityLimits()
        self.ns = db.namespace(preset)
        self._clock = clock
        self._next_purge = 0.0

    # -- the interface ----------------------------------------------------------
    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        now = self._clock()
        with self.db.write() as cur:
            delta = added = 0
            for slot in slots:
                row = cur.execute(
                    "SELECT owner, traits, bytes, seen_at FROM identity WHERE ns = ? AND kind = ? AND ident = ?",
                    (self.ns, slot.kind, slot.ident),
                ).fetchone()
                existing = None
                if row is not None and now - row[3] <= self.limits.ttl_seconds:
                    existing = Remembered(json.loads(row[1]), row[0])
                new = merged(existing, traits, owner, slot.exclusive)
                text = traits_json(new.traits)
                size = entry_bytes(slot.kind, slot.ident, new.owner, text)
                cur.execute(
                    "INSERT INTO identity (ns, kind, ident, owner, traits, bytes, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (ns, kind, ident) DO UPDATE SET owner = excluded.owner, "
                    "traits = excluded.traits, bytes = excluded.bytes, seen_at = excluded.seen_at",
                    (self.ns, slot.kind, slot.ident, new.owner, text, size, now),
                )
                delta += size - (row[2] if row is not None else 0)
                added += row is None
            self._account(cur, delta, added)
            if now >= self._next_purge:
                self._purge(cur, now)
            self._evict(cur)

    def recall(self, kind: str, ident: str) -> Remembered | None:
        rows = self.db.read(
            "SELECT owner, traits, seen_at FROM identity WHERE ns = ? AND kind = ? AND ident = ?",
            (self.ns, kind, ident),
        )
        if not rows:
            return None
        owner, text, seen_at = rows[0]
        now = self._clock()
        if now - seen_at > self.limits.ttl_seconds:
            return None
        if now - seen_at > TOUCH_SECONDS:
            try:
                with self.db.write() as cur:
                    cur.execute(
                        "UPDATE identity SET seen_at = ? WHERE ns = ? AND kind = ? AND ident = ?",
                        (now, self.ns, kind, ident),
                    )
            except StateError:
                pass  # keeping the order of last sight is best effort; the traits are what matter
        return Remembered(json.loads(text), owner)

    def forget(self, slots: Sequence[Slot]) -> None:
        with self.db.write() as cur:
            delta = removed = 0
            for slot in slots:
                where = (self.ns, slot.kind, slot.ident)
                row = cur.execute(
                    "SELECT bytes FROM identity WHERE ns = ? AND kind = ? AND ident = ?", where
                ).fetchone()
                if row is not None:
                    cur.execute("DELETE FROM identity WHERE ns = ? AND kind = ? AND ident = ?", where)
                    delta -= row[0]
                    removed += 1
            self._account(cur, delta, -removed)

    # -- bulk and inspection ----------------------------------------------------
    def bulk_load(self, entries: Iterable[tuple[str, str, str | None, Mapping[str, Any], float]]) -> None:
        """Rows ``(kind, ident, owner, traits, seen_at)`` written as they are, in one transaction,
        then the bounds applied (an import of an older memory, or a test's million users)."""

        def rows() -> Iterable[tuple[Any, ...]]:
            for kind, ident, owner, traits, seen_at in entries:
                text = traits_json(traits)
                yield self.ns, kind, ident, owner, text, entry_bytes(kind, ident, owner, text), seen_at

        with self.db.write() as cur:
            cur.executemany(
                "INSERT OR REPLACE INTO identity (ns, kind, ident, owner, traits, bytes, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows(),
            )
            cur.execute(
                "UPDATE identity_usage SET bytes = (SELECT COALESCE(SUM(bytes), 0) FROM identity WHERE ns = ?1), "
                "entries = (SELECT COUNT(*) FROM identity WHERE ns = ?1) WHERE ns = ?1",
                (self.ns,),
            )
            self._purge(cur, self._clock(), batch=None)
            self._evict(cur)

    def usage(self) -> tuple[int, int]:
        """(bytes, entries) counted against the bounds."""
        rows = self.db.read("SELECT bytes, entries FROM identity_usage WHERE ns = ?", (self.ns,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def __len__(self) -> int:
        return self.usage()[1]

    # -- bounds -------------------------------------------------------------------
    def _account(self, cur: Any, delta: int, entries: int) -> None:
        if delta or entries:
            cur.execute(
                "UPDATE identity_usage SET bytes = bytes + ?, entries = entries + ? WHERE ns = ?",
                (delta, entries, self.ns),
            )

    def _purge(self, cur: Any, now: float, batch: int | None = PURGE_BATCH) -> None:
        """Delete rows past their age, a batch at a time so one write never holds the lock for long."""
        cutoff = now - self.limits.ttl_seconds
        limit = -1 if batch is None else batch
        rows = cur.execute(
            "SELECT rowid, bytes FROM identity WHERE ns = ? AND seen_at < ? ORDER BY seen_at LIMIT ?",
            (self.ns, cutoff, limit),
        ).fetchall()
        self._delete(cur, rows)
        # A full batch means more may be waiting: purge again on the next write.
        self._next_purge = now if batch is not None and len(rows) == batch else now + PURGE_EVERY_SECONDS

    def _evict(self, cur: Any) -> None:
        """Least recently seen first, until the total is within ``max_bytes``."""
        used, entries = cur.execute("SELECT bytes, entries FROM identity_usage WHERE ns = ?", (self.ns,)).fetchone()
        need = used - self.limits.max_bytes
        while need > 0 and entries > 0:
            average = max(1, used // max(1, entries))
            batch = min(EVICT_BATCH_MAX, need // average + 16)
            rows = cur.execute(
                "SELECT rowid, bytes FROM identity WHERE ns = ? ORDER BY seen_at LIMIT ?", (self.ns, batch)
            ).fetchall()
            if not rows:
                break
            chosen = []
            for rowid, size in rows:
                chosen.append((rowid, size))
                need -= size
                if need <= 0:
                    break
            self._delete(cur, chosen)
            used, entries = cur.execute("SELECT bytes, entries FROM identity_usage WHERE ns = ?", (self.ns,)).fetchone()

    def _delete(self, cur: Any, rows: Sequence[tuple[int, int]]) -> None:
        if not rows:
            return
        cur.executemany("DELETE FROM identity WHERE rowid = ?", [(rowid,) for rowid, _ in rows])
        self._account(cur, -sum(size for _, size in rows), -len(rows))
