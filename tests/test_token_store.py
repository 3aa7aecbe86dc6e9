"""Where a rotating refresh token survives between runs."""

from __future__ import annotations

import stat
from pathlib import Path

from engine.runtime import Engine
from engine.state.sqlite import SqliteState, SqliteTokenStore
from engine.state.token_store import MemoryTokenStore, StoredTokens, fingerprint

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


def test_engine_with_state_dir_keeps_tokens_in_the_state_database_per_client_and_chain(tmp_path: Path) -> None:
    settings = {
        "client_id": "cid",
        "client_secret": "s3cr3t-client",
        "refresh_token": CONFIGURED,
        "base_url": "https://api.outreach.test",
    }
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
