"""Where a rotating refresh token survives between runs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from engine.state import token_store as ts
from engine.runtime import Engine
from engine.state.sqlite import SqliteState, SqliteTokenStore
from engine.state.token_store import FileTokenStore, MemoryTokenStore, StoredTokens, fingerprint

CONFIGURED = "rt-initial-123456"
ROTATED = "rt-rotated-654321"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fingerprint_is_short_stable_and_one_way() -> None:
    tag = fingerprint(CONFIGURED)
    assert tag == fingerprint(CONFIGURED)
    assert len(tag) == 16 and all(c in "0123456789abcdef" for c in tag)
    assert tag != fingerprint(ROTATED)
    assert CONFIGURED not in tag


# --------------------------------------------------------------------------
# FileTokenStore
# --------------------------------------------------------------------------


def test_file_store_round_trip_for_the_same_configured_token(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens.json")
    tokens = StoredTokens(ROTATED, "at-abcdef", 1_900_000_000.0)

    store.save(tokens, CONFIGURED)

    assert store.load(CONFIGURED) == tokens
    assert FileTokenStore(tmp_path / "tokens.json").load(CONFIGURED) == tokens  # a fresh instance reads it too


def test_file_store_round_trip_without_an_access_token(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens.json")
    store.save(StoredTokens(ROTATED), CONFIGURED)
    assert store.load(CONFIGURED) == StoredTokens(ROTATED, None, None)


def test_file_store_is_0600_and_keeps_only_a_fingerprint_of_the_configured_token(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "tokens.json"
    FileTokenStore(path).save(StoredTokens(ROTATED, "at-abcdef", 1_900_000_000.0), CONFIGURED)

    assert mode(path) == 0o600
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["origin"] == fingerprint(CONFIGURED)
    assert data["refresh_token"] == ROTATED
    assert CONFIGURED not in path.read_text(encoding="utf-8")


def test_file_store_tightens_an_existing_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{}", encoding="utf-8")
    os.chmod(path, 0o644)

    FileTokenStore(path).save(StoredTokens(ROTATED), CONFIGURED)

    assert mode(path) == 0o600


def test_file_store_with_another_configured_token_starts_over(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens.json")
    store.save(StoredTokens(ROTATED, "at-abcdef", 1_900_000_000.0), CONFIGURED)

    assert store.load("rt-reauthorised-999000") is None


def test_file_store_save_replaces_the_previous_chain(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens.json")
    store.save(StoredTokens(ROTATED), CONFIGURED)
    store.save(StoredTokens("rt-rotated-again-1"), CONFIGURED)
    assert store.load(CONFIGURED) == StoredTokens("rt-rotated-again-1")

    store.save(StoredTokens("rt-other-chain-2"), "rt-reauthorised-999000")
    assert store.load(CONFIGURED) is None
    assert store.load("rt-reauthorised-999000") == StoredTokens("rt-other-chain-2")


def test_file_store_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens.json")
    for i in range(3):
        store.save(StoredTokens(f"{ROTATED}-{i}"), CONFIGURED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json"]


def test_file_store_save_is_atomic_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    store.save(StoredTokens(ROTATED), CONFIGURED)
    before = path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ts.os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.save(StoredTokens("rt-never-written"), CONFIGURED)
    monkeypatch.undo()

    assert path.read_bytes() == before  # the old chain is intact
    assert store.load(CONFIGURED) == StoredTokens(ROTATED)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json"]  # the temp file was cleaned up


def test_file_store_writes_through_fsync_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(ts.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(ts.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])

    FileTokenStore(tmp_path / "tokens.json").save(StoredTokens(ROTATED), CONFIGURED)

    assert calls.index("fsync") < calls.index("replace")


def test_file_store_missing_file_loads_none(tmp_path: Path) -> None:
    assert FileTokenStore(tmp_path / "absent.json").load(CONFIGURED) is None


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    "[1, 2, 3]",
    "null",
    json.dumps({"origin": fingerprint(CONFIGURED)}),  # no refresh token
    json.dumps({"origin": fingerprint(CONFIGURED), "refresh_token": ""}),
    json.dumps({"origin": fingerprint(CONFIGURED), "refresh_token": 12345}),
    json.dumps({"refresh_token": ROTATED}),  # no origin
])
def test_file_store_corrupt_or_foreign_content_loads_none(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content, encoding="utf-8")
    assert FileTokenStore(path).load(CONFIGURED) is None


def test_file_store_ignores_malformed_access_fields(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"origin": fingerprint(CONFIGURED), "refresh_token": ROTATED,
                                "access_token": 42, "access_expires_at": "tomorrow"}), encoding="utf-8")
    assert FileTokenStore(path).load(CONFIGURED) == StoredTokens(ROTATED, None, None)


def test_file_store_unreadable_path_loads_none(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").mkdir()  # a directory where the file should be
    assert FileTokenStore(tmp_path / "tokens.json").load(CONFIGURED) is None


def test_engine_with_state_dir_keeps_tokens_in_the_state_database_per_client_and_chain(tmp_path: Path) -> None:
    settings = {"client_id": "cid", "client_secret": "s3cr3t-client", "refresh_token": CONFIGURED,
                "base_url": "https://api.outreach.test"}
    engine = Engine.from_preset("outreach/lead-capture", settings, state=tmp_path)
    store = engine.token_store.inner
    assert isinstance(store, SqliteTokenStore)
    assert store.db.path == tmp_path / "state.db"
    assert store.chain(CONFIGURED) == f"{fingerprint('cid')}:{fingerprint(CONFIGURED)}"
    store.save(StoredTokens(ROTATED, "at-abcdef", 1_900_000_000.0), CONFIGURED)
    assert SqliteState(tmp_path).tokens("cid").load(CONFIGURED) == StoredTokens(ROTATED, "at-abcdef", 1_900_000_000.0)
    assert SqliteState(tmp_path).tokens("other-client").load(CONFIGURED) is None
    assert SqliteState(tmp_path).tokens("cid").load("rt-reauthorised-999000") is None  # a new chain starts fresh
    assert mode(tmp_path / "state.db") == 0o600
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
    assert ROTATED.encode() in stored
    assert CONFIGURED.encode() not in stored  # only its fingerprint


# --------------------------------------------------------------------------
# MemoryTokenStore
# --------------------------------------------------------------------------


def test_memory_store_starts_empty() -> None:
    assert MemoryTokenStore().load(CONFIGURED) is None


def test_memory_store_round_trip_and_origin_check() -> None:
    store = MemoryTokenStore()
    tokens = StoredTokens(ROTATED, "at-abcdef", 1_900_000_000.0)
    store.save(tokens, CONFIGURED)

    assert store.load(CONFIGURED) == tokens
    assert store.load("rt-reauthorised-999000") is None

    store.save(StoredTokens("rt-next-chain-1"), "rt-reauthorised-999000")
    assert store.load("rt-reauthorised-999000") == StoredTokens("rt-next-chain-1")
    assert store.load(CONFIGURED) is None


def test_memory_stores_are_independent() -> None:
    a, b = MemoryTokenStore(), MemoryTokenStore()
    a.save(StoredTokens(ROTATED), CONFIGURED)
    assert b.load(CONFIGURED) is None
