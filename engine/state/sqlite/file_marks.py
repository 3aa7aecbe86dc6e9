"""Our SQLite files carry a mark, so a file that is not ours, or no longer whole, is refused.

Why: SQLite treats a 0-byte file as a new, empty database. A ``state.db``
truncated by a bad restore or an editor would silently become a fresh one,
and the dead letters, the journal, the identity memory and the rotated
refresh token would be gone without a word. So every file the engine writes
carries ``PRAGMA application_id`` (:data:`APPLICATION_ID`, the same for every
file of the project) and ``PRAGMA user_version`` (its schema version), and
on open:

* a missing file is created whole (schema and marks in a file of its own,
  then hard-linked into place), so a file that exists was always finished
  by its writer, even when two processes start on a new directory at once;
* an empty file, a non-SQLite file, a SQLite file of another application,
  and a file written by a newer schema are refused with one line naming
  the file; nothing is written to it;
* a file that cannot be read now (an I/O error, a full disk, a lock) is
  not refused but reported as the error it is: only a file SQLite itself
  calls not a database or corrupt (``SQLITE_NOTADB``, ``SQLITE_CORRUPT``)
  is refused, so ``--reset-state`` never moves a healthy file aside;
* a file of an earlier version of the engine, which had no mark yet
  (``application_id`` 0 but our tables), is marked, keeping its rows.

Starting afresh is deliberate: :func:`move_aside` (``--reset-state``)
renames a refused file, and its ``-wal`` and ``-shm`` (a stale WAL must
never be replayed into a new file), to ``<name>.refused-<UTC time>``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import StateError

APPLICATION_ID = 0x5347454E  # "SGEN": signal-engine
SQLITE_MAGIC = b"SQLite format 3\x00"
RESET_HINT = "pass --reset-state to move it aside and start afresh"
_SIDE_FILES = ("-wal", "-shm", "-journal")


class StateRefused(StateError):
    """The file exists but is not a state file this engine can use; nothing was written to it."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class FileKind:
    """What one of our files holds: how it is created, marked and recognised when it has no mark yet."""

    what: str  # "state database", "queue": for messages
    schema: str
    version: int
    tables: frozenset[str]  # an unmarked file with all of these is an earlier version of ours
    unmarked_version: int  # the user_version such a file has


def check_file(path: Path, kind: FileKind) -> None:
    """Refuse ``path`` (:class:`StateRefused`) unless it is missing or a file of ``kind`` this engine can open."""
    if not path.exists():
        return
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise StateError(f"{path}: cannot read the {kind.what} ({exc.strerror})") from None
    if size == 0 and not _has_side_data(path):
        raise StateRefused(
            path,
            f"{path}: the {kind.what} file is empty (0 bytes), so what it held is gone; "
            f"restore it from a backup, or {RESET_HINT}",
        )
    if size > 0 and _header(path) != SQLITE_MAGIC:  # SQLite reads a file shorter than its header as empty
        raise StateRefused(
            path,
            f"{path}: not a SQLite database, so not a signal-engine {kind.what}; "
            f"use another --state DIR, or {RESET_HINT}",
        )
    try:
        # Read-only: a file about to be refused must not be touched.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot open the {kind.what} ({exc})") from None
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        if not _not_ours(exc):  # the disk, not the file: refusing it would invite --reset-state to move it aside
            raise StateError(
                f"{path}: cannot read the {kind.what} ({_cause(exc)}); it is left as it was: "
                "check the disk (full, read-only, failing?) and retry"
            ) from None
        raise StateRefused(
            path,
            f"{path}: not a SQLite database, so not a signal-engine {kind.what} ({exc}); "
            f"use another --state DIR, or {RESET_HINT}",
        ) from None
    finally:
        conn.close()
    if app_id == 0 and version == kind.unmarked_version and kind.tables <= tables:
        return  # an earlier version's file: marked by open_marked
    if app_id != APPLICATION_ID:
        raise StateRefused(
            path,
            f"{path}: a SQLite file of another application (application_id {app_id:#010x}, "
            f"not {APPLICATION_ID:#010x}), not a signal-engine {kind.what}; use another "
            f"--state DIR, or {RESET_HINT}",
        )
    if version > kind.version:
        raise StateRefused(
            path,
            f"{path}: written by a newer signal-engine (schema {version}, this one knows up to "
            f"{kind.version}); upgrade signal-engine, or {RESET_HINT}",
        )


def open_marked(path: Path, kind: FileKind, *, timeout: float) -> sqlite3.Connection:
    """A connection to ``path``, created whole when missing; refused (:class:`StateRefused`) when not ours."""
    if not path.exists():
        _create_whole(path, kind)
    check_file(path, kind)
    return sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)


def mark(cur: sqlite3.Cursor, kind: FileKind) -> None:
    """Inside a write transaction: bring the schema up to ``kind.version`` and set both marks."""
    # Statement by statement: executescript would commit the caller's transaction.
    for statement in kind.schema.split(";"):
        if statement.strip():
            cur.execute(statement)
    cur.execute(f"PRAGMA application_id={APPLICATION_ID}")
    cur.execute(f"PRAGMA user_version={kind.version}")


def mark_if_needed(conn: sqlite3.Connection, kind: FileKind) -> None:
    """Mark a file of an earlier version (one :func:`check_file` accepted), in a transaction of its own."""
    if not needs_mark(conn, kind):
        return
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        if needs_mark(conn, kind):  # another process may have marked it meanwhile
            mark(cur, kind)
        cur.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            cur.execute("ROLLBACK")
        raise


def needs_mark(conn: sqlite3.Connection, kind: FileKind) -> bool:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    return bool(app_id != APPLICATION_ID or version < kind.version)


def move_aside(path: Path, kind: FileKind, *, clock: float | None = None) -> Path | None:
    """With ``--reset-state``: rename a refused ``path`` (and its side files) aside; the new name, or None if usable."""
    try:
        check_file(path, kind)
        return None
    except StateRefused:
        pass
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if clock is None else clock))
    target = path.with_name(f"{path.name}.refused-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.refused-{stamp}-{n}")
    try:
        os.replace(path, target)
        for suffix in _SIDE_FILES:
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.replace(side, target.with_name(target.name + suffix))
    except OSError as exc:
        raise StateError(f"{path}: cannot move it aside to {target.name} ({exc.strerror})") from None
    return target


def _not_ours(exc: sqlite3.Error) -> bool:
    """True only for what the file itself says: not a database, or not whole (SQLITE_NOTADB, SQLITE_CORRUPT).

    An I/O error, a file SQLite cannot open, a full disk, a lock held by
    another process: those are the machine's, and the file may be healthy.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


def _cause(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    return f"{exc}, {name}" if name else str(exc)


def _header(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StateError(f"{path}: cannot read it ({exc.strerror})") from None


def _has_side_data(path: Path) -> bool:
    """A 0-byte file whose WAL holds frames is a new database not yet checkpointed, not an empty one."""
    try:
        return path.with_name(path.name + "-wal").stat().st_size > 0
    except OSError:
        return False


def _create_whole(path: Path, kind: FileKind) -> None:
    """Schema and marks in a file of its own, then linked into place: ``path`` never exists half-made."""
    temp = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
        conn = sqlite3.connect(str(temp), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            mark(cur, kind)
            cur.execute("COMMIT")
        finally:
            conn.close()  # the last connection: the WAL is checkpointed into the file and removed
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process made it first; its file is as good as ours
        except OSError:
            if not path.exists():  # a file system without hard links
                os.replace(temp, path)
    except (OSError, sqlite3.Error) as exc:
        raise StateError(f"{path}: cannot create the {kind.what} ({getattr(exc, 'strerror', None) or exc})") from None
    finally:
        for name in (temp.name, *(temp.name + s for s in _SIDE_FILES)):
            with contextlib.suppress(OSError):
                os.unlink(temp.with_name(name))
