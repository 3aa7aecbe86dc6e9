"""The record of recent events in the state database (``state.db``, table ``record``).

One row per outcome: the columns the console filters on, and the full
entry as JSON (the summary it lists is read from it; ``summary`` is '' but
in rows written before, where it is the summary's own text). A batch is one transaction
(``synchronous=NORMAL``: the record is a view, not an event that must
survive a power cut), its rows added by statements of up to
:data:`ROWS_PER_INSERT` rows, and the same transaction trims each integration it
touched to ``per_integration`` rows and drops rows older than
``max_age_seconds``. The table is created by this store on first use, so
the schema of the other stores is untouched.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..record import DEFAULT_LIMITS, Recorded, RecordLimits, RecordQuery, TrimSchedule, summary_row, whole
from .database import Database

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS record (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        integration TEXT NOT NULL,
        at REAL NOT NULL,
        outcome TEXT,
        reason TEXT,
        email TEXT,
        user_id TEXT,
        message_id TEXT,
        summary TEXT NOT NULL,
        entry TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS record_by_integration ON record (integration, seq)",
    "CREATE INDEX IF NOT EXISTS record_by_age ON record (at)",
)


ROWS_PER_INSERT = 64  # 576 parameters: within the 999 of any SQLite
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"


@functools.lru_cache(maxsize=8)
def _insert(rows: int) -> str:
    """An INSERT of ``rows`` entries: a power of two up to :data:`ROWS_PER_INSERT`, so that few texts exist.

    A batch is written as 64 rows a statement and its rest as powers of two
    (a batch of 21: 16, 4, 1), so the sqlite3 module's statement cache keeps
    the seven texts compiled: a batch of any other size would compile its own
    (about 0.2 ms for 20 rows), and the quarter-second flush makes many sizes.
    """
    return (
        "INSERT INTO record (integration, at, outcome, reason, email, user_id, message_id, summary, entry) VALUES "
        + ", ".join([_ROW] * rows)
    )


def _chunks(count: int) -> list[tuple[int, int]]:
    """``(start, rows)`` of the statements that write ``count`` entries in order (see :func:`_insert`)."""
    out = []
    start = 0
    while count - start >= ROWS_PER_INSERT:
        out.append((start, ROWS_PER_INSERT))
        start += ROWS_PER_INSERT
    size = ROWS_PER_INSERT // 2
    while start < count:
        if count - start >= size:
            out.append((start, size))
            start += size
        size //= 2
    return out


class SqliteRecord:
    def __init__(
        self, db: Database, limits: RecordLimits = DEFAULT_LIMITS, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.limits = limits
        self._clock = clock
        self._ready = False
        self._trims = TrimSchedule(limits)

    def _create(self) -> None:
        if self._ready:
            return
        if not self.db.read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'record'"):
            with self.db.write() as cur:
                for statement in _SCHEMA:
                    cur.execute(statement)
        self._ready = True

    def add_many(self, entries: Sequence[Recorded]) -> None:
        if not entries:
            return
        self._create()
        with self.db.write() as cur:
            # Rows in statements of up to ROWS_PER_INSERT: a statement per row costs SQLite (and the sqlite3
            # module) about a third more per entry. In order, so each entry's seq is as one by one.
            for start, rows in _chunks(len(entries)):
                cur.execute(_insert(rows), list(_flat(entries[start : start + rows])))
            for name in self._trims.to_trim(entries):
                cur.execute(
                    "DELETE FROM record WHERE integration = ? AND seq <= (SELECT seq FROM record WHERE "
                    "integration = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (name, name, self.limits.per_integration),
                )
            now = self._clock()
            if self._trims.age_due(now):
                cur.execute("DELETE FROM record WHERE at < ?", (now - self.limits.max_age_seconds,))

    def recent(self, query: RecordQuery) -> list[dict[str, Any]]:
        self._create()
        where, params = [], []
        if query.integration:
            where.append("integration = ?")
            params.append(query.integration)
        if query.outcome:
            where.append("outcome = ?")
            params.append(query.outcome)
        if query.search:
            needle = query.search.strip().lower()
            where.append("(email LIKE ? ESCAPE '\\' OR user_id = ? OR message_id = ?)")
            params.extend([f"%{_like(needle)}%", needle, needle])
        sql = (
            "SELECT seq, summary, entry FROM record"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY seq DESC"
        )
        if not query.reason:
            rows = self.db.read(sql + " LIMIT ?", (*params, max(0, query.limit)))
            return [summary_row(text, entry, str(seq)) for seq, text, entry in rows]
        # A reason may be a drop reason, a cause or a status: checked on the summary, newest first.
        out = []
        for seq, text, entry in self.db.read(sql, params):
            row = summary_row(text, entry, str(seq))
            if query.matches(row):
                out.append(row)
                if len(out) >= query.limit:
                    break
        return out

    def get(self, entry_id: str) -> dict[str, Any] | None:
        self._create()
        if not str(entry_id).isdigit():
            return None
        rows = self.db.read("SELECT summary, entry FROM record WHERE seq = ?", (int(entry_id),))
        return whole(rows[0][0], rows[0][1], str(int(entry_id))) if rows else None

    def since(self, cursor: str | None) -> tuple[list[dict[str, Any]], str]:
        self._create()
        if cursor is None or not cursor.isdigit():
            last = self.db.read("SELECT COALESCE(MAX(seq), 0) FROM record")[0][0]
            return [], str(last)
        rows = self.db.read(
            "SELECT seq, summary, entry FROM record WHERE seq > ? ORDER BY seq LIMIT 500", (int(cursor),)
        )
        if not rows:
            return [], cursor
        return [summary_row(text, entry, str(seq)) for seq, text, entry in rows], str(rows[-1][0])

    def window(self, since: float) -> list[dict[str, Any]]:
        self._create()
        return [
            summary_row(text, entry, str(seq))
            for seq, text, entry in self.db.read(
                "SELECT seq, summary, entry FROM record WHERE at >= ? ORDER BY seq", (since,)
            )
        ]

    def integrations(self) -> list[str]:
        self._create()
        return [name for (name,) in self.db.read("SELECT DISTINCT integration FROM record ORDER BY integration")]

    def __len__(self) -> int:
        self._create()
        return int(self.db.read("SELECT COUNT(*) FROM record")[0][0])


_flat = itertools.chain.from_iterable  # a chunk's rows' values, in order, at C speed


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
