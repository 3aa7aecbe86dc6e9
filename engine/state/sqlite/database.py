"""The state database: one SQLite file per state directory, in WAL mode.

Why SQLite: it is in the standard library, a committed transaction survives
a killed process, several processes can share the file (a ``run`` and a
``dlq replay``), and a lookup is an index search rather than a file read.

* ``<dir>/state.db`` (and SQLite's ``-wal`` and ``-shm`` beside it) is 0600,
  the directory 0700: the rows hold personal data and refresh tokens.
* Writes are transactions (``BEGIN IMMEDIATE``). Identity and journal
  writes use ``synchronous=NORMAL``: durable against a killed process, and
  without an fsync per event. Tokens and dead letters use ``FULL``: durable
  against a power cut too.
* A writer waits up to ``busy_seconds`` for another process's write to end.
* The page cache is capped (``CACHE_KIB``), so memory does not grow with the
  file, and the ``-wal`` file is cut back to ``WAL_LIMIT_BYTES`` after each
  checkpoint, so one large transaction (an import) does not leave it large.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ...loggers import package_logger
from ..errors import StateError, StateWriteError
from .file_marks import FileKind, mark, move_aside, needs_mark, open_marked

DB_NAME = "state.db"
SCHEMA_VERSION = 1
CACHE_KIB = 8192
WAL_LIMIT_BYTES = 16 * 1024 * 1024
BUSY_SECONDS = 10.0
# A deferred write (see Database.defer) lands with the next write of any store, or after this long.
DEFER_SECONDS = 0.1

log = package_logger(__name__)
# (table, column, type) added since schema 1, in the CREATE TABLE below too: a
# database made before gets them on open. The token answer's values
# (auth.token_values) are kept beside the access token they came with.
ADDED_COLUMNS = (("tokens", "token_values", "TEXT"),)
# Tables added since schema 1, in SCHEMA too: a database made before gets them on open.
# rate_budgets: each rate window's budget (see rate_budget.py), so a restart does not refill it.
ADDED_TABLES = {
    "rate_budgets": """
CREATE TABLE IF NOT EXISTS rate_budgets (
    name TEXT PRIMARY KEY,
    tokens REAL,
    last REAL,
    remaining REAL,
    reset REAL,
    reset_raw TEXT,
    paused_until REAL,
    in_flight INTEGER NOT NULL DEFAULT 0,
    used_at REAL NOT NULL
)""",
    "console_integrations": """
CREATE TABLE IF NOT EXISTS console_integrations (
    name TEXT PRIMARY KEY,
    preset TEXT NOT NULL,
    doc TEXT NOT NULL,
    saved_at REAL NOT NULL
)""",
}

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS namespaces (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS identity (
    ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    ident TEXT NOT NULL,
    owner TEXT,
    traits TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (ns, kind, ident)
);
CREATE INDEX IF NOT EXISTS identity_by_age ON identity (ns, seen_at);
CREATE TABLE IF NOT EXISTS identity_usage (
    ns INTEGER PRIMARY KEY,
    bytes INTEGER NOT NULL,
    entries INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    ns INTEGER NOT NULL,
    key BLOB NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS journal_by_age ON journal (ns, delivered_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    preset TEXT NOT NULL,
    key TEXT,
    added_at REAL NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_preset ON dead_letters (preset, added_at);
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_by_key ON dead_letters (preset, key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS tokens (
    chain TEXT PRIMARY KEY,
    refresh_token TEXT NOT NULL,
    access_token TEXT,
    access_expires_at REAL,
    saved_at REAL NOT NULL,
    token_values TEXT
);
CREATE TABLE IF NOT EXISTS write_probe (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    pad BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS imported (
    source TEXT PRIMARY KEY,
    imported_at REAL NOT NULL
);
"""
    + ";".join(ADDED_TABLES.values())
    + ";\n"
)

STATE_FILE = FileKind(
    "state database",
    SCHEMA,
    SCHEMA_VERSION,
    frozenset({"namespaces", "identity", "journal", "dead_letters", "tokens"}),
    unmarked_version=1,
)


class Database:
    """One connection to ``<directory>/state.db``; safe to share between the stores of one engine."""

    def __init__(self, directory: str | Path, *, busy_seconds: float = BUSY_SECONDS, reset: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self._lock = threading.RLock()
        self._namespaces: dict[str, int] = {}
        self._deferred: list[Callable[[sqlite3.Cursor], object]] = []
        self._deferred_timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None  # and its loop
        self.moved_aside: Path | None = None  # where a refused file went (``reset``)
        try:
            make_private_dir(self.directory)
            if reset:
                self.moved_aside = move_aside(self.path, STATE_FILE)
            self.conn = open_marked(self.path, STATE_FILE, timeout=busy_seconds)
        except StateError:
            raise  # StateRefused included: it names the file and what to do
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{self.path}: cannot open the state database ({_reason(exc)})") from None
        try:
            _switch_to_wal(self.conn, busy_seconds)
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self.conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
            self._migrate()
        except (sqlite3.Error, StateError) as exc:
            self.conn.close()
            raise StateError(f"{self.path}: cannot open the state database ({_reason(exc)})") from None

    def _migrate(self) -> None:
        """Mark a file of an earlier version (checked by :func:`open_marked`), keeping its rows."""
        if needs_mark(self.conn, STATE_FILE):
            with self.write() as cur:
                if needs_mark(self.conn, STATE_FILE):  # another process may have marked it meanwhile
                    mark(cur, STATE_FILE)
        self._add_tables()
        self._add_columns()

    def _add_tables(self) -> None:
        """Tables added after schema 1; an older engine reading the database ignores them."""
        present = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, ddl in ADDED_TABLES.items():
            if table not in present:
                with self.write() as cur:
                    cur.execute(ddl)

    def _add_columns(self) -> None:
        """Columns added to a table after schema 1; an older engine reading the database ignores them."""
        for table, column, kind in ADDED_COLUMNS:
            present = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                with self.write() as cur:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @contextlib.contextmanager
    def write(self, *, durable: bool = False) -> Iterator[sqlite3.Cursor]:
        """One transaction; :class:`StateWriteError` (and nothing written) when it cannot commit."""
        with self._lock:
            cur = self.conn.cursor()
            try:
                if durable:
                    cur.execute("PRAGMA synchronous=FULL")
                cur.execute("BEGIN IMMEDIATE")
                if self._deferred:
                    self._run_deferred(cur)
                yield cur
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(self.conn)
                raise StateWriteError(f"{self.path}: {_reason(exc)}", full=_is_full(exc)) from None
            except BaseException:
                _rollback(self.conn)
                raise
            finally:
                if durable:
                    with contextlib.suppress(sqlite3.Error):
                        cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

    def defer(self, op: Callable[[sqlite3.Cursor], object]) -> None:
        """Run ``op`` inside the next write transaction of this connection, whichever store's it is.

        For a write that may be lost by a killed process (it spends nothing,
        promises nothing): it costs no transaction of its own when another
        write follows, as the journal's follows the rate budget's lesson from
        an answer. Without a running event loop it is written at once; with
        one, within ``DEFER_SECONDS`` at the latest.
        """
        with self._lock:
            self._deferred.append(op)
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                # Armed once per loop, never cancelled (a flush may run on another thread, where a loop's
                # timer must not be touched): it clears itself when it fires, and finds nothing or the rest.
                if self._deferred_timer is None or self._deferred_timer[0] is not loop:
                    self._deferred_timer = (loop, loop.call_later(DEFER_SECONDS, self._deferred_due))
                return
        self.flush_deferred()

    def _deferred_due(self) -> None:
        with self._lock:
            self._deferred_timer = None
        self.flush_deferred()

    def flush_deferred(self) -> None:
        """Write what :meth:`defer` holds now, in a transaction of its own (best effort, as each op is)."""
        with self._lock:
            if not self._deferred:
                return
            try:
                with self.write():
                    pass
            except StateError:
                self._deferred.clear()  # each op is best effort: the next answer teaches it again

    def _run_deferred(self, cur: sqlite3.Cursor) -> None:
        ops, self._deferred = self._deferred, []
        for op in ops:
            try:
                op(cur)
            except sqlite3.Error as exc:  # best effort: the transaction it rides in must still land
                log.debug("state: a deferred write was not made (%s)", _reason(exc))

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {_reason(exc)}") from None

    def namespace(self, name: str) -> int:
        """A small number standing for a preset in every row, so rows stay short."""
        if name not in self._namespaces:
            rows = self.read("SELECT id FROM namespaces WHERE name = ?", (name,))
            if not rows:
                with self.write() as cur:
                    cur.execute("INSERT OR IGNORE INTO namespaces (name) VALUES (?)", (name,))
                    ns = cur.execute("SELECT id FROM namespaces WHERE name = ?", (name,)).fetchone()[0]
                    cur.execute("INSERT OR IGNORE INTO identity_usage (ns, bytes, entries) VALUES (?, 0, 0)", (ns,))
                rows = [(ns,)]
            self._namespaces[name] = int(rows[0][0])
        return self._namespaces[name]

    def close(self) -> None:
        with self._lock:
            self.flush_deferred()
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()


def make_private_dir(path: Path) -> None:
    """Create the directory 0700 (whatever the umask); an existing one is left as its owner set it."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _switch_to_wal(conn: sqlite3.Connection, busy_seconds: float) -> None:
    """WAL mode, waiting out another process that is switching the same new file at the same moment.

    SQLite answers "database is locked" at once there, without its busy
    handler: two runs started together on a new state directory would
    otherwise have one of them refused.
    """
    deadline = time.monotonic() + busy_seconds
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _is_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc).lower()
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
