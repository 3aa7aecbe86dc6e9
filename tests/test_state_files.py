"""The state files are marked: an empty, foreign or newer file is refused, never silently replaced.

SQLite opens a 0-byte file as a new empty database, so without a mark a
truncated ``state.db`` would lose every dead letter, the journal, the
identity memory and the rotated refresh token without a word. Each case
here checks the refusal names the file, leaves it byte for byte as it was,
and that ``--reset-state`` (the only way to start afresh) moves it aside.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.runtime import Engine
from engine.state.backend import open_state
from engine.state.sqlite import SqliteState
from engine.state.sqlite.file_marks import APPLICATION_ID, StateRefused
from engine.state.sqlite.queue import QUEUE_DB, SqliteQueue
from engine.state.token_store import StoredTokens

PRESET = "hubspot/contacts"
LETTER = {
    "id": "letter-1",
    "preset": PRESET,
    "messageId": "m-1",
    "action": "create",
    "request": {
        "method": "POST",
        "url": "http://127.0.0.1:9/crm/v3/objects/contacts",
        "headers": {},
        "body": {"properties": {"email": "jane@acme.com"}},
    },
}


def foreign_sqlite(path: Path) -> None:
    """A SQLite file of another application: GeoPackage's application_id, a table of its own."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id=0x47504B47")
    conn.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, geom BLOB)")
    conn.execute("INSERT INTO features (geom) VALUES (x'00')")
    conn.commit()
    conn.close()


def unmarked_sqlite(path: Path) -> None:
    """A SQLite file with no mark at all and tables that are not ours (application_id 0)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()


def newer_state(path: Path) -> None:
    SqliteState(path.parent).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.commit()
    conn.close()


REFUSED = {
    "empty": (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    "garbage": (lambda p: p.write_bytes(b"not a database at all\n" * 50), "not a SQLite database"),
    "short-garbage": (lambda p: p.write_bytes(b"x"), "not a SQLite database"),
    "foreign-sqlite": (foreign_sqlite, "another application (application_id 0x47504b47"),
    "unmarked-not-ours": (unmarked_sqlite, "another application (application_id 0x00000000"),
    "newer": (newer_state, "newer signal-engine (schema 99"),
}


def snapshot(directory: Path) -> dict[str, bytes]:
    """The files of a directory; a reader of a WAL-mode file (a newer one) may add its -shm and an empty -wal."""
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and not (p.name.endswith(("-shm", "-wal")) and (p.name.endswith("-shm") or not p.stat().st_size))
    }


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_state_file_is_named_in_one_line_and_left_as_it_was(case: str, tmp_path: Path) -> None:
    make, words = REFUSED[case]
    path = tmp_path / "state.db"
    make(path)
    before = snapshot(tmp_path)
    with pytest.raises(StateRefused) as refused:
        open_state(tmp_path)
    message = refused.value.strerror
    assert "\n" not in message and str(path) in message and words in message
    assert "--reset-state" in message
    assert snapshot(tmp_path) == before  # nothing created over it or beside it
    with pytest.raises(StateRefused):
        Engine.from_preset(PRESET, {"access_token": "t"}, state=tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_reset_state_moves_the_refused_file_aside_and_starts_afresh(case: str, tmp_path: Path) -> None:
    make, _ = REFUSED[case]
    path = tmp_path / "state.db"
    make(path)
    original = path.read_bytes()
    engine = Engine.from_preset(PRESET, {"access_token": "t"}, state=tmp_path, reset_state=True)
    aside = engine.state.moved_aside  # type: ignore[attr-defined]
    assert aside is not None and aside.name.startswith("state.db.refused-") and aside.parent == tmp_path
    assert aside.read_bytes() == original
    assert engine.dead_letters.entries(PRESET) == []
    engine.state.close()
    assert marks(path) == (APPLICATION_ID, 1)


def marks(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("PRAGMA application_id").fetchone()[0], conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_a_new_state_file_is_marked_and_a_usable_one_is_not_moved_by_reset(tmp_path: Path) -> None:
    state = SqliteState(tmp_path)
    state.dead_letters().add(dict(LETTER))
    state.close()
    assert marks(tmp_path / "state.db") == (APPLICATION_ID, 1)
    again = SqliteState(tmp_path, reset=True)
    assert again.moved_aside is None and [e["id"] for e in again.dead_letters().entries()] == ["letter-1"]
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "refused" in p.name) == []


def test_a_state_file_of_the_version_before_the_marks_is_marked_and_keeps_its_rows(tmp_path: Path) -> None:
    # What the engine wrote before the marks: the same schema, user_version 1, application_id 0.
    state = SqliteState(tmp_path)
    state.dead_letters().add(dict(LETTER))
    state.tokens("cid").save(StoredTokens("rotated-refresh-token"), "configured-refresh-token")
    state.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("PRAGMA application_id=0")
    conn.commit()
    conn.close()
    assert marks(tmp_path / "state.db") == (0, 1)

    reopened = SqliteState(tmp_path)
    assert reopened.moved_aside is None
    assert [e["id"] for e in reopened.dead_letters().entries()] == ["letter-1"]
    stored = reopened.tokens("cid").load("configured-refresh-token")
    assert stored is not None and stored.refresh_token == "rotated-refresh-token"
    reopened.close()
    assert marks(tmp_path / "state.db") == (APPLICATION_ID, 1)
    assert sorted(p.name for p in tmp_path.iterdir() if "refused" in p.name) == []


def test_the_queue_file_is_marked_and_an_empty_one_refused(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path)
    asyncio.run(queue.close())
    assert marks(tmp_path / QUEUE_DB) == (APPLICATION_ID, 1)
    (tmp_path / QUEUE_DB).write_bytes(b"")
    for side in tmp_path.glob(f"{QUEUE_DB}-*"):
        side.unlink()
    with pytest.raises(StateRefused, match=r"queue.db: the queue file is empty"):
        SqliteQueue(tmp_path)
    assert (tmp_path / QUEUE_DB).read_bytes() == b""


def test_a_queue_file_of_the_version_before_the_marks_keeps_its_events(tmp_path: Path) -> None:
    # The queue as it was written before the marks: no user_version, no application_id.
    conn = sqlite3.connect(tmp_path / QUEUE_DB)
    conn.execute(
        "CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, "
        "enqueued_at REAL NOT NULL, consumer TEXT, leased_at REAL, deliveries INTEGER NOT NULL DEFAULT 0)"
    )
    conn.execute('INSERT INTO queue (body, enqueued_at) VALUES (\'{"type": "track"}\', 1)')
    conn.commit()
    conn.close()
    queue = SqliteQueue(tmp_path)
    try:
        assert queue._count == 1
    finally:
        asyncio.run(queue.close())
    assert marks(tmp_path / QUEUE_DB) == (APPLICATION_ID, 1)


# --------------------------------------------------------------------------
# through the real command line
# --------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_cli_refuses_an_empty_state_file_and_reset_state_starts_afresh(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"")
    settings = tmp_path / "settings.yaml"
    settings.write_text("access_token: some-token\n", encoding="utf-8")

    for command in (
        ["dlq", "list", PRESET],
        ["dlq", "replay", PRESET, "--settings", str(settings)],
        ["run", PRESET, "--settings", str(settings), "--events", "-"],
    ):
        refused = cli(*command, "--state", str(state), cwd=tmp_path)
        assert refused.returncode == 2, (command, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and str(state / "state.db") in lines[0] and "empty (0 bytes)" in lines[0], lines
        assert "--reset-state" in lines[0] and "Traceback" not in refused.stderr
        assert refused.stdout == ""
        assert snapshot(state) == {"state.db": b""}

    reset = cli("dlq", "list", PRESET, "--state", str(state), "--reset-state", cwd=tmp_path)
    assert reset.returncode == 0, reset.stderr
    said = [line for line in reset.stderr.splitlines() if "--reset-state" in line]
    assert len(said) == 1 and str(state / "state.db") in said[0] and "moved it aside" in said[0]
    aside = [p for p in state.iterdir() if p.name.startswith("state.db.refused-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"" and aside[0].name in said[0]
    assert marks(state / "state.db") == (APPLICATION_ID, 1)

    # From then on the directory is usable without the flag, and the flag moves nothing more.
    again = cli("dlq", "list", PRESET, "--state", str(state), "--reset-state", cwd=tmp_path)
    assert again.returncode == 0 and "moved it aside" not in again.stderr
    assert len([p for p in state.iterdir() if "refused" in p.name]) == 1


def _no_file_over_1_kib() -> None:
    """In the child: a real I/O error on the state file, as a full disk gives, without root or a mount.

    SQLite sizes a WAL file's ``-shm`` to 32 KiB on open; over ``RLIMIT_FSIZE``
    that fails with EFBIG, and the open with ``SQLITE_IOERR_SHMSIZE``.
    """
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_an_io_error_on_a_healthy_state_file_is_not_a_refusal_and_reset_state_leaves_it(tmp_path: Path) -> None:
    import os

    state = tmp_path / "state"
    healthy = SqliteState(state)
    healthy.dead_letters().add(dict(LETTER))
    healthy.close()
    before = snapshot(state)
    for command in (["dlq", "list", PRESET, "--reset-state"], ["dlq", "list", PRESET]):
        failed = subprocess.run(
            [sys.executable, "-m", "engine", *command, "--state", str(state)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=_no_file_over_1_kib,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert failed.returncode == 2, (command, failed.stderr)
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and str(state / "state.db") in lines[0] and "disk I/O error" in lines[0], lines
        assert "not a SQLite database" not in lines[0] and "--reset-state" not in lines[0]
        assert "moved it aside" not in failed.stderr and "Traceback" not in failed.stderr
        assert snapshot(state) == before and not [p for p in state.iterdir() if "refused" in p.name]
    listed = cli("dlq", "list", PRESET, "--state", str(state), cwd=tmp_path)  # the disk is fine again
    assert listed.returncode == 0 and "letter-1" in listed.stdout, listed.stderr


def test_serve_refuses_a_foreign_queue_file_before_it_listens(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    foreign_sqlite(state / QUEUE_DB)
    before = (state / QUEUE_DB).read_bytes()
    env_file = tmp_path / "intake.yaml"
    env_file.write_text(json.dumps({"write_keys": ["wk"]}), encoding="utf-8")
    settings = tmp_path / "settings.yaml"
    settings.write_text("access_token: some-token\n", encoding="utf-8")
    refused = cli(
        "serve",
        PRESET,
        "--settings",
        str(settings),
        "--intake",
        str(env_file),
        "--port",
        "0",
        "--state",
        str(state),
        cwd=tmp_path,
    )
    assert refused.returncode == 2, refused.stderr
    assert str(state / QUEUE_DB) in refused.stderr and "another application" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert (state / QUEUE_DB).read_bytes() == before


def test_reset_state_moves_a_refused_queue_file_aside_for_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli.common import UsageError, check_state_dir

    (tmp_path / QUEUE_DB).write_bytes(b"")
    with pytest.raises(UsageError, match=r"queue.db: the queue file is empty"):
        check_state_dir(str(tmp_path), queue=True)
    check_state_dir(str(tmp_path), queue=True, reset=True)
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and str(tmp_path / QUEUE_DB) in said[0] and "moved it aside" in said[0]
    assert [p.read_bytes() for p in tmp_path.glob(f"{QUEUE_DB}.refused-*")] == [b""]
    asyncio.run(SqliteQueue(tmp_path).close())
    assert marks(tmp_path / QUEUE_DB) == (APPLICATION_ID, 1)


def test_reset_state_with_redis_is_a_usage_error(tmp_path: Path) -> None:
    refused = cli("dlq", "list", PRESET, "--redis", "redis://127.0.0.1:9/0", "--reset-state", cwd=tmp_path)
    assert refused.returncode == 2 and "--reset-state applies to a --state directory" in refused.stderr
