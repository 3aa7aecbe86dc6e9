"""Dead letters in the state database: one row per letter, every change its own transaction.

Written with ``synchronous=FULL``: a letter is an event that would
otherwise be lost, so it must survive a power cut, not just a killed
process. A ``run`` adding letters and a ``dlq replay`` removing others work
on different rows and cannot undo each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from ..dead_letters import PAGE_SIZE, filed_under
from .database import Database


class SqliteDeadLetters:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, entry: dict[str, Any]) -> None:
        preset, key = filed_under(entry), entry.get("key")
        with self.db.write(durable=True) as cur:
            same = (
                cur.execute("SELECT id FROM dead_letters WHERE preset = ? AND key = ?", (preset, key)).fetchone()
                if key is not None
                else None
            )
            if same is not None:
                kept = {**entry, "id": same[0]}
                cur.execute("UPDATE dead_letters SET entry = ? WHERE id = ?", (_text(kept), same[0]))
            else:
                cur.execute(
                    "INSERT OR REPLACE INTO dead_letters (id, preset, key, added_at, entry) VALUES (?, ?, ?, ?, ?)",
                    (str(entry.get("id")), preset, key, time.time(), _text(entry)),
                )

    def entries(self, preset: str | None = None) -> list[dict[str, Any]]:
        self.db.flush_deferred()
        if preset is None:
            rows = self.db.read("SELECT entry FROM dead_letters ORDER BY added_at, rowid")
        else:
            rows = self.db.read("SELECT entry FROM dead_letters WHERE preset = ? ORDER BY added_at, rowid", (preset,))
        return [json.loads(text) for (text,) in rows]

    def pages(self, preset: str | None = None, size: int = PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
        # Keyset paging on (added_at, rowid), the order entries() gives, up to the newest row at the start:
        # each page is one index range search, whatever was removed before it.
        self.db.flush_deferred()
        where, args = ("WHERE preset = ?", [preset]) if preset is not None else ("", [])
        newest = self.db.read(
            f"SELECT added_at, rowid FROM dead_letters {where} ORDER BY added_at DESC, rowid DESC LIMIT 1", args
        )
        if not newest:
            return
        after: tuple[float, int] = (float("-inf"), -1)
        also = "AND" if where else "WHERE"
        while True:
            rows = self.db.read(
                f"SELECT added_at, rowid, entry FROM dead_letters {where} {also} (added_at, rowid) > (?, ?) "
                "AND (added_at, rowid) <= (?, ?) ORDER BY added_at, rowid LIMIT ?",
                [*args, *after, *newest[0], size],
            )
            if rows:
                yield [json.loads(text) for _, _, text in rows]
            if len(rows) < size:
                return
            after = (rows[-1][0], rows[-1][1])

    def count(self, preset: str | None = None) -> int:
        self.db.flush_deferred()
        if preset is None:
            return len(self)
        return int(self.db.read("SELECT COUNT(*) FROM dead_letters WHERE preset = ?", (preset,))[0][0])

    def remove(self, letter_id: str) -> None:
        with self.db.write(durable=True) as cur:
            cur.execute("DELETE FROM dead_letters WHERE id = ?", (str(letter_id),))

    def update(self, entry: dict[str, Any]) -> None:
        with self.db.write(durable=True) as cur:
            cur.execute("UPDATE dead_letters SET entry = ? WHERE id = ?", (_text(entry), str(entry.get("id"))))

    def discard(self, preset: str, key: str) -> None:
        # Called after every delivery, and there is seldom a letter: the delete rides in the next write
        # transaction (the next request's rate budget, a moment later), so the usual case costs no
        # transaction and takes no write lock of its own from a `dlq replay` working beside it. Not
        # synced: a stale letter that comes back after a kill or a power cut is removed by replay unsent.
        self.db.defer(lambda cur: cur.execute("DELETE FROM dead_letters WHERE preset = ? AND key = ?", (preset, key)))

    def __len__(self) -> int:
        self.db.flush_deferred()
        return int(self.db.read("SELECT COUNT(*) FROM dead_letters")[0][0])


def _text(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, default=str)
