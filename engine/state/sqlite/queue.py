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

Several integrations, one queue: an event's body is stored once (``queue``),
and one small row per integration (``pending``) is its place in that
integration's backlog, with the integration's own lease, delivery count and
noted failure. Rows rather than a cursor per integration because deliveries
finish out of order (concurrency, upserts serialised per record): a row is
acknowledged on its own, and what is left is exactly that integration's lag.
The body goes when no integration still needs it. Every integration named in
the file gets its row, disabled ones too, so a disabled integration resumes
where it stopped; one added later gets rows from the first event after it
appeared; one removed from the file has its rows dropped at the next start,
leaving the others untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...loggers import package_logger
from ..errors import StateError, StateWriteError
from ..queue import QueuedEvent
from .database import make_private_dir
from .file_marks import FileKind, mark_if_needed, open_marked

log = package_logger(__name__)

QUEUE_DB = "queue.db"
QUEUE_LOCK = "queue.lock"
DEFAULT_INTEGRATION = "default"  # a queue opened without integrations (tests, a single consumer)

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

# Added as the file opens, beside the marked schema: an additive table, the file's version unchanged.
PENDING = """
CREATE TABLE IF NOT EXISTS pending (
    integration TEXT NOT NULL,
    id INTEGER NOT NULL,
    consumer TEXT,
    leased_at REAL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    failure TEXT,
    PRIMARY KEY (integration, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_entry ON pending (id);
"""


class QueueBusy(StateError):
    """Another process already serves this state directory."""


class SqliteQueue:
    """The queue of a state directory; as an :class:`~engine.state.queue.EventQueue` it is its first
    integration's view (:meth:`view` gives the others')."""

    def __init__(
        self, directory: str | Path, *, integrations: Sequence[str] = (DEFAULT_INTEGRATION,), clock: Any = time.time
    ) -> None:
        self.directory = Path(directory)
        self.integrations = list(dict.fromkeys(integrations)) or [DEFAULT_INTEGRATION]
        self.integration = self.integrations[0]
        self._clock = clock
        self._lock = threading.Lock()
        self._waiters: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.integrations}
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
            fresh = self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pending'").fetchone() is None
            self.conn.executescript(PENDING)
            self._adopt(fresh)
            # Every lease is a dead process's: this one holds the lock now.
            self.conn.execute("UPDATE pending SET consumer = NULL, leased_at = NULL WHERE consumer IS NOT NULL")
            self._count = int(self.conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0])
            self._lags = dict.fromkeys(self.integrations, 0)
            for name, count in self.conn.execute("SELECT integration, COUNT(*) FROM pending GROUP BY integration"):
                self._lags[name] = int(count)
        except StateError:
            self._unlock()
            raise
        except (OSError, sqlite3.Error) as exc:
            self._unlock()
            raise StateError(f"{path}: cannot open the queue ({exc})") from None

    def _adopt(self, fresh: bool) -> None:
        """Entries of an earlier version (no ``pending`` table yet) go to every integration; the rows of an
        integration no longer named are dropped, and bodies nobody needs any more with them."""
        if fresh:
            for name in self.integrations:
                self.conn.execute(
                    "INSERT OR IGNORE INTO pending (integration, id, deliveries, failure) "
                    "SELECT ?, id, deliveries, failure FROM queue",
                    (name,),
                )
        marks = ",".join("?" * len(self.integrations))
        for name, count in self.conn.execute(
            f"SELECT integration, COUNT(*) FROM pending WHERE integration NOT IN ({marks}) GROUP BY integration",
            self.integrations,
        ).fetchall():
            log.warning(
                "queue: integration %s is no longer configured: its %d waiting event(s) are dropped", name, count
            )
            self.conn.execute("DELETE FROM pending WHERE integration = ?", (name,))
        self.conn.execute("DELETE FROM queue WHERE NOT EXISTS (SELECT 1 FROM pending WHERE pending.id = queue.id)")

    def add_integration(self, name: str) -> None:
        """An integration from now on (one set up in the console while ``serve`` runs): each event accepted
        after this gets a row for it, as for one named at start; rows an earlier start left for it are its lag.

        The placeholder of a queue opened with no integration (``default``) goes: nothing consumes it.
        """
        with self._lock:
            if name in self._waiters:
                return
            (waiting,) = self.conn.execute("SELECT COUNT(*) FROM pending WHERE integration = ?", (name,)).fetchone()
            if self.integrations == [DEFAULT_INTEGRATION] and self._lags.get(DEFAULT_INTEGRATION, 0) == 0:
                self.integrations, self._waiters, self._lags = [], {}, {}
            self.integrations = [*self.integrations, name]  # a new list: an insert under way keeps its own
            self.integration = self.integrations[0]
            self._waiters[name] = asyncio.Event()
            self._lags[name] = int(waiting)

    def remove_integration(self, name: str) -> int:
        """No more rows for this integration (deleted in the console while ``serve`` runs); its waiting rows
        are dropped, as the next start would drop an integration no longer named. How many were dropped."""
        with self._lock:
            if name not in self._waiters:
                return 0
            # The last one gone: the placeholder again, as for a queue opened with none (nothing is appended
            # then: the intake refuses events while there is no integration).
            self.integrations = [n for n in self.integrations if n != name] or [DEFAULT_INTEGRATION]
            self.integration = self.integrations[0]
            self._waiters.pop(name).set()
            self._lags.pop(name, None)
            for kept in self.integrations:
                self._waiters.setdefault(kept, asyncio.Event())
                self._lags.setdefault(kept, 0)
            with self._transaction(StateWriteError):
                dropped = self.conn.execute("DELETE FROM pending WHERE integration = ?", (name,)).rowcount
                gone = self.conn.execute(
                    "DELETE FROM queue WHERE NOT EXISTS (SELECT 1 FROM pending WHERE pending.id = queue.id)"
                ).rowcount
            self._count = max(0, self._count - gone)
            return int(dropped)

    def view(self, integration: str) -> IntegrationQueue:
        """One integration's side of the queue: its own position, leases and lag."""
        if integration not in self._waiters:
            raise KeyError(integration)
        return IntegrationQueue(self, integration)

    def lag(self, integration: str) -> int:
        """Events this integration has not finished yet."""
        return self._lags.get(integration, 0)

    # -- the interface ------------------------------------------------------
    async def append(self, bodies: Sequence[str]) -> None:
        """Store each event once, and give it a row in every integration's backlog: one transaction."""
        if not bodies:
            return
        now = self._clock()
        named = await asyncio.to_thread(self._insert, [(body, now) for body in bodies])
        self._count += len(bodies)
        for name in named:  # the integrations the rows were written for (one may be added or removed meanwhile)
            if name in self._lags:
                self._lags[name] += len(bodies)
        for waiter in self._waiters.values():
            waiter.set()

    async def backlog(self) -> int:
        return self._count

    async def read(self, consumer: str, count: int, block_seconds: float) -> list[QueuedEvent]:
        return await self._read(self.integration, consumer, count, block_seconds)

    async def claim(self, consumer: str, min_idle_seconds: float, count: int) -> list[QueuedEvent]:
        return await self._claim(self.integration, consumer, min_idle_seconds, count)

    async def touch(self, consumer: str, ids: Sequence[str]) -> None:
        await self._touch(self.integration, consumer, ids)

    async def ack(self, done: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        await self._ack(self.integration, done)

    async def release(self, consumer: str, entries: Sequence[QueuedEvent]) -> None:
        await self._release(self.integration, consumer, entries)

    async def fail(self, consumer: str, ids: Sequence[str], error: str) -> None:
        await self._fail(self.integration, consumer, ids, error)

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

    # -- per integration ------------------------------------------------------
    async def _read(self, name: str, consumer: str, count: int, block_seconds: float) -> list[QueuedEvent]:
        waiter = self._waiters[name]
        waiter.clear()
        entries = await asyncio.to_thread(self._lease, name, consumer, count, "consumer IS NULL", ())
        if entries or block_seconds <= 0:
            return entries
        try:
            await asyncio.wait_for(waiter.wait(), block_seconds)
        except TimeoutError:
            return []
        return await asyncio.to_thread(self._lease, name, consumer, count, "consumer IS NULL", ())

    async def _claim(self, name: str, consumer: str, min_idle_seconds: float, count: int) -> list[QueuedEvent]:
        cutoff = self._clock() - min_idle_seconds
        return await asyncio.to_thread(
            self._lease,
            name,
            consumer,
            count,
            "consumer IS NOT NULL AND consumer != ? AND leased_at < ?",
            (consumer, cutoff),
        )

    async def _touch(self, name: str, consumer: str, ids: Sequence[str]) -> None:
        if ids:
            now = self._clock()
            await asyncio.to_thread(
                self._write,
                "UPDATE pending SET leased_at = ? WHERE integration = ? AND id = ? AND consumer = ?",
                [(now, name, int(i), consumer) for i in ids],
            )

    async def _ack(self, name: str, done: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        if done:
            finished, gone = await asyncio.to_thread(self._finish, name, [int(i) for i, _ in done])
            self._lags[name] = max(0, self._lags.get(name, 0) - finished)
            self._count = max(0, self._count - gone)

    async def _release(self, name: str, consumer: str, entries: Sequence[QueuedEvent]) -> None:
        if entries:
            await asyncio.to_thread(
                self._write,
                "UPDATE pending SET consumer = NULL, leased_at = NULL, "
                "deliveries = MAX(deliveries - 1, 0) WHERE integration = ? AND id = ? "
                "AND consumer = ?",
                [(name, int(e.id), consumer) for e in entries],
            )
            self._waiters[name].set()

    async def _fail(self, name: str, consumer: str, ids: Sequence[str], error: str) -> None:
        if ids:
            await asyncio.to_thread(
                self._write,
                "UPDATE pending SET failure = ? WHERE integration = ? AND id = ? AND consumer = ?",
                [(error, name, int(i), consumer) for i in ids],
            )

    # -- internals ------------------------------------------------------------
    def _insert(self, rows: list[tuple[str, float]]) -> list[str]:
        with self._lock, self._transaction(StateWriteError):
            named = self.integrations
            # AUTOINCREMENT ids only grow, and BEGIN IMMEDIATE keeps every other writer out: the rows above
            # the largest id now are exactly this request's.
            (before,) = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM queue").fetchone()
            self.conn.executemany("INSERT INTO queue (body, enqueued_at) VALUES (?, ?)", rows)
            self.conn.executemany(
                "INSERT INTO pending (integration, id) SELECT ?, id FROM queue WHERE id > ?",
                [(name, before) for name in named],
            )
        return named

    def _finish(self, name: str, ids: list[int]) -> tuple[int, int]:
        """This integration is done with these entries; a body no integration still needs goes."""
        finished = gone = 0
        with self._lock, self._transaction(StateWriteError):
            for entry in ids:
                finished += self.conn.execute(
                    "DELETE FROM pending WHERE integration = ? AND id = ?", (name, entry)
                ).rowcount
                gone += self.conn.execute(
                    "DELETE FROM queue WHERE id = ? AND NOT EXISTS (SELECT 1 FROM pending WHERE pending.id = ?)",
                    (entry, entry),
                ).rowcount
        return finished, gone

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
                raise error(
                    f"{self.directory / QUEUE_DB}: {exc}",
                    **({"full": "full" in str(exc).lower()} if error is StateWriteError else {}),
                ) from None
            raise

    def _lease(self, name: str, consumer: str, count: int, where: str, params: tuple[Any, ...]) -> list[QueuedEvent]:
        now = self._clock()
        where = " AND ".join(f"p.{part.strip()}" for part in where.split(" AND "))
        with self._lock, self._transaction(StateError):
            rows = self.conn.execute(
                f"SELECT p.id, q.body, q.enqueued_at, p.deliveries, p.failure FROM pending p "
                f"JOIN queue q ON q.id = p.id WHERE p.integration = ? AND {where} "
                "ORDER BY p.id LIMIT ?",
                (name, *params, count),
            ).fetchall()
            self.conn.executemany(
                "UPDATE pending SET consumer = ?, leased_at = ?, deliveries = deliveries + 1 "
                "WHERE integration = ? AND id = ?",
                [(consumer, now, name, row[0]) for row in rows],
            )
        return [
            QueuedEvent(str(i), body, at, deliveries + 1, failure=failure) for i, body, at, deliveries, failure in rows
        ]

    def _probe(self) -> None:
        with self._lock, self._transaction(StateWriteError):
            self.conn.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (self._clock(),))

    def _unlock(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)


class IntegrationQueue:
    """One integration's view of a :class:`SqliteQueue`: reading, leases and acknowledgements of its own.

    ``append`` stores for every integration (the intake's call), ``backlog``
    is this integration's lag.
    """

    def __init__(self, queue: SqliteQueue, integration: str) -> None:
        self.queue = queue
        self.integration = integration

    async def append(self, bodies: Sequence[str]) -> None:
        await self.queue.append(bodies)

    async def backlog(self) -> int:
        return self.queue.lag(self.integration)

    async def read(self, consumer: str, count: int, block_seconds: float) -> list[QueuedEvent]:
        return await self.queue._read(self.integration, consumer, count, block_seconds)

    async def claim(self, consumer: str, min_idle_seconds: float, count: int) -> list[QueuedEvent]:
        return await self.queue._claim(self.integration, consumer, min_idle_seconds, count)

    async def touch(self, consumer: str, ids: Sequence[str]) -> None:
        await self.queue._touch(self.integration, consumer, ids)

    async def ack(self, done: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        await self.queue._ack(self.integration, done)

    async def release(self, consumer: str, entries: Sequence[QueuedEvent]) -> None:
        await self.queue._release(self.integration, consumer, entries)

    async def fail(self, consumer: str, ids: Sequence[str], error: str) -> None:
        await self.queue._fail(self.integration, consumer, ids, error)

    async def writable(self) -> bool:
        return await self.queue.writable()

    async def close(self) -> None:
        pass  # the queue is closed by its owner

    def __len__(self) -> int:
        return self.queue.lag(self.integration)
