"""The embedded event queue: a table in ``<state dir>/queue.db``, for ``serve`` in one process.

Why a file of its own beside ``state.db``: the intake commits every request
with ``synchronous=FULL`` (a 200 means the events survive a power cut), and
that must not wait behind the state's writes, nor change its schema.

One process serves a state directory at a time: it holds ``queue.lock``
(``flock``, released by the kernel even on ``kill -9``). So when it opens the
queue, every lease in it belongs to a process that is gone, and is cleared:
a restart re-reads exactly what was answered 200 and never acknowledged.

The SQLite calls run in a worker thread, so the event loop (the intake and
the deliveries) never waits on a disk sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import StateError, StateWriteError
from ..queue import QueuedEvent
from .database import make_private_dir
from .file_marks import FileKind, mark_if_needed, open_marked

QUEUE_DB = "queue.db"
QUEUE_LOCK = "queue.lock"

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    consumer TEXT,
    leased_at REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    failure TEXT
);
CREATE INDEX IF NOT EXISTS queue_unleased ON queue (consumer, id);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""

QUEUE_FILE = FileKind("queue", SCHEMA, 1, frozenset({"queue"}), unmarked_version=0)


class QueueBusy(StateError):
    """Another process already serves this state directory."""


class SqliteQueue:
    def __init__(self, directory: str | Path, *, clock: Any = time.time) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self._lock = threading.Lock()
        self._appended = asyncio.Event()
        try:
            make_private_dir(self.directory)
            self._lock_fd = os.open(self.directory / QUEUE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"{self.directory}: cannot open the queue ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise QueueBusy(f"{self.directory}: another process is serving this state directory") from None
        path = self.directory / QUEUE_DB
        try:
            self.conn = open_marked(path, QUEUE_FILE, timeout=10)  # an empty, foreign or newer file is refused
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
            mark_if_needed(self.conn, QUEUE_FILE)
            columns = {row[1] for row in self.conn.execute("PRAGMA table_info(queue)")}
            if "failure" not in columns:  # a queue.db from before failures were noted
                self.conn.execute("ALTER TABLE queue ADD COLUMN failure TEXT")
            # Every lease is a dead process's: this one holds the lock now.
            self.conn.execute("UPDATE queue SET consumer = NULL, leased_at = NULL WHERE consumer IS NOT NULL")
            self._count = int(self.conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0])
        except StateError:
            self._unlock()
            raise
        except (OSError, sqlite3.Error) as exc:
            self._unlock()
            raise StateError(f"{path}: cannot open the queue ({exc})") from None

    # -- the interface ------------------------------------------------------
    async def append(self, bodies: Sequence[str]) -> None:
        if not bodies:
            return
        now = self._clock()
        await asyncio.to_thread(self._write, "INSERT INTO queue (body, enqueued_at) VALUES (?, ?)",
                                [(body, now) for body in bodies])
        self._count += len(bodies)
        self._appended.set()

    async def backlog(self) -> int:
        return self._count

    async def read(self, consumer: str, count: int, block_seconds: float) -> list[QueuedEvent]:
        entries = await asyncio.to_thread(self._lease, consumer, count, "consumer IS NULL", ())
        if entries or block_seconds <= 0:
            return entries
        self._appended.clear()
        try:
            await asyncio.wait_for(self._appended.wait(), block_seconds)
        except asyncio.TimeoutError:
            return []
        return await asyncio.to_thread(self._lease, consumer, count, "consumer IS NULL", ())

    async def claim(self, consumer: str, min_idle_seconds: float, count: int) -> list[QueuedEvent]:
        cutoff = self._clock() - min_idle_seconds
        return await asyncio.to_thread(self._lease, consumer, count,
                                       "consumer IS NOT NULL AND consumer != ? AND leased_at < ?", (consumer, cutoff))

    async def touch(self, consumer: str, ids: Sequence[str]) -> None:
        if ids:
            now = self._clock()
            await asyncio.to_thread(self._write, "UPDATE queue SET leased_at = ? WHERE id = ? AND consumer = ?",
                                    [(now, int(i), consumer) for i in ids])

    async def ack(self, done: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        if done:
            gone = await asyncio.to_thread(self._write, "DELETE FROM queue WHERE id = ?", [(int(i),) for i, _ in done])
            self._count = max(0, self._count - gone)

    async def release(self, consumer: str, entries: Sequence[QueuedEvent]) -> None:
        if entries:
            await asyncio.to_thread(self._write, "UPDATE queue SET consumer = NULL, leased_at = NULL, "
                                    "deliveries = MAX(deliveries - 1, 0) WHERE id = ? AND consumer = ?",
                                    [(int(e.id), consumer) for e in entries])
            self._appended.set()

    async def fail(self, consumer: str, ids: Sequence[str], error: str) -> None:
        if ids:
            await asyncio.to_thread(self._write, "UPDATE queue SET failure = ? WHERE id = ? AND consumer = ?",
                                    [(error, int(i), consumer) for i in ids])

    async def writable(self) -> bool:
        try:
            await asyncio.to_thread(self._probe)
        except OSError:
            return False
        return True

    async def close(self) -> None:
        with self._lock:
            try:
                self.conn.close()
            finally:
                self._unlock()

    def __len__(self) -> int:
        return self._count

    # -- internals ------------------------------------------------------------
    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        with self._lock, self._transaction(StateWriteError):
            changed = 0
            for row in rows:
                changed += self.conn.execute(sql, row).rowcount
            return changed

    @contextlib.contextmanager
    def _transaction(self, error: type[StateError]) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on *any* exception, so one request's
        failure (whatever it is) never leaves a transaction open for the next one."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            yield
            self.conn.execute("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise error(f"{self.directory / QUEUE_DB}: {exc}", **(
                    {"full": "full" in str(exc).lower()} if error is StateWriteError else {})) from None
            raise

    def _lease(self, consumer: str, count: int, where: str, params: tuple[Any, ...]) -> list[QueuedEvent]:
        now = self._clock()
        with self._lock, self._transaction(StateError):
            rows = self.conn.execute(f"SELECT id, body, enqueued_at, deliveries, failure FROM queue WHERE {where} "
                                     "ORDER BY id LIMIT ?", (*params, count)).fetchall()
            self.conn.executemany("UPDATE queue SET consumer = ?, leased_at = ?, deliveries = deliveries + 1 "
                                  "WHERE id = ?", [(consumer, now, row[0]) for row in rows])
        return [QueuedEvent(str(i), body, at, deliveries + 1, failure=failure)
                for i, body, at, deliveries, failure in rows]

    def _probe(self) -> None:
        with self._lock, self._transaction(StateWriteError):
            self.conn.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (self._clock(),))

    def _unlock(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)
