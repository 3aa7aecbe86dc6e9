"""The state stores: identity, delivery journal, dead letters and tokens in one SQLite file.

Store-level tests use the real SQLite store on a temporary directory; the
engine-level ones talk real HTTP to the Outreach sandbox on loopback. A
full disk is simulated by making the database's writes fail exactly as
SQLite fails when the disk is full (``tests/test_state_durability.py`` does it
with a real, tiny filesystem too).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import sqlite3
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine import outcome as oc
from engine.compile.compiler import PresetError, load_preset
from engine.golden import discover, render
from engine.language.settings import resolve
from engine.outcome import Outcome
from engine.pipeline.identity import IdentityMemory
from engine.pipeline.prepare import Pipeline
from engine.runtime import Engine
from engine.sandbox.outreach import SandboxConfig, start_sandbox
from engine.state.buffered import BufferedTokenStore
from engine.state.errors import StateWriteError
from engine.state.identity import IdentityLimits, MemoryIdentityStore
from engine.state.journal import event_key
from engine.state.sqlite import SqliteState, SqliteTokenStore
from engine.state.sqlite.database import Database
from engine.state.token_store import MemoryTokenStore, StoredTokens, fingerprint

PRESET = "outreach/lead-capture"
BUILTIN = Path(__file__).resolve().parent.parent / "presets" / "outreach" / "lead-capture.yaml"
GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CLIENT_SECRET = "state-client-secret"
REFRESH = "state-refresh-token-0"
CONSENT = {"consent": {"canonical": {"marketing": True}}}


def settings(base_url: str, **extra: Any) -> dict[str, Any]:
    return {"client_id": "cid", "client_secret": CLIENT_SECRET, "refresh_token": REFRESH, "base_url": base_url, **extra}


def lead(n: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Lead Submitted",
        "userId": f"u{n}",
        "messageId": f"m{n}",
        "traits": {"email": f"lead{n}@acme.com"},
        "context": CONSENT,
        **fields,
    }


async def sandbox(**config: Any) -> tuple[web.AppRunner, str]:
    return await start_sandbox(
        SandboxConfig(client_id="cid", client_secret=CLIENT_SECRET, refresh_token=REFRESH, **config), port=0
    )


async def sandbox_state(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/_sandbox/state") as resp:
            return await resp.json()


async def no_wait(_: float) -> None:
    await asyncio.sleep(0)


class DiskFull:
    """While ``on``, every write to a state database fails as SQLite fails on a full disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        self.refused = 0
        original = Database.write

        def write(db: Database, *, durable: bool = False) -> Any:
            if self.on:
                self.refused += 1
                raise StateWriteError(f"{db.path}: database or disk is full", full=True)
            return original(db, durable=durable)

        monkeypatch.setattr(Database, "write", write)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> DiskFull:
    return DiskFull(monkeypatch)


@pytest.fixture
def state_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="engine")
    return caplog


# --------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------


@functools.cache
def _preset(name: str) -> Any:
    return load_preset(name)


DRY_RUN_CASES = [
    c for c in discover(GOLDEN) if isinstance(json.loads(c.expected_path.read_text(encoding="utf-8")), list)
]


@pytest.mark.parametrize("case", DRY_RUN_CASES, ids=lambda c: c.name)
def test_every_golden_case_gives_the_same_outcomes_with_the_sqlite_identity_store(case: Any, tmp_path: Path) -> None:
    preset = _preset(case.preset_name)
    spec = json.loads(case.path.read_text(encoding="utf-8"))
    store = SqliteState(tmp_path).identity(preset.name, IdentityLimits.of(preset.identity))
    pipeline = Pipeline(
        preset,
        resolve(preset.settings, spec.get("settings") or {}, require=False),
        IdentityMemory.for_preset(preset.identity, store),
    )
    actual = [pipeline.dry_run(event, i).to_dict() for i, event in enumerate(spec["events"])]
    assert render(actual) == case.expected_path.read_text(encoding="utf-8")


def test_sqlite_and_memory_identity_stores_agree_on_a_random_history(tmp_path: Path) -> None:
    """Owners of shared ids, merges, forgets: the one merge rule, in both stores."""
    rng = random.Random(7)
    memory = IdentityMemory(store=MemoryIdentityStore())
    sqlite = IdentityMemory(store=SqliteState(tmp_path).identity(PRESET, IdentityLimits()))
    users, devices = [f"u{i}" for i in range(6)], [f"a{i}" for i in range(4)]
    for step in range(600):
        event: dict[str, Any] = {}
        if rng.random() < 0.8:
            event["userId"] = rng.choice(users)
        if rng.random() < 0.7:
            event["anonymousId"] = rng.choice(devices)
        roll = rng.random()
        if roll < 0.55:
            traits = {rng.choice(["email", "title", "company"]): f"v{step}"}
            memory.remember(event, traits)
            sqlite.remember(event, traits)
        elif roll < 0.6:
            memory.forget(event)
            sqlite.forget(event)
        else:
            assert sqlite.recall(event) == memory.recall(event), (step, event)
    for user in users:
        for device in devices:
            event = {"userId": user, "anonymousId": device}
            assert sqlite.recall(event) == memory.recall(event)


def test_sqlite_identity_is_bounded_by_bytes_least_recently_seen_first(tmp_path: Path) -> None:
    now = [1_000_000.0]
    one = len("userId") + 2 * len("u00") + len('{"email":"00@x.co"}')  # the entry size the preset language defines
    store = SqliteState(tmp_path, clock=lambda: now[0]).identity(PRESET, IdentityLimits(max_bytes=10 * one))
    memory = IdentityMemory(keys=("userId",), store=store)
    for i in range(10):
        now[0] += 1
        memory.remember({"userId": f"u{i:02d}"}, {"email": f"{i:02d}@x.co"})
    assert store.usage() == (10 * one, 10)
    now[0] += 1
    assert memory.recall({"userId": "u00"}) == {"email": "00@x.co"}  # too recent to refresh its "last seen"
    for i in range(10, 15):
        now[0] += 1
        memory.remember({"userId": f"u{i:02d}"}, {"email": f"{i:02d}@x.co"})
    assert store.usage() == (10 * one, 10)
    kept = [i for i in range(15) if memory.recall({"userId": f"u{i:02d}"})]
    assert kept == list(range(5, 15))
    with sqlite3.connect(tmp_path / "state.db") as conn:  # the counter is the truth on disk
        assert conn.execute("SELECT SUM(bytes), COUNT(*) FROM identity").fetchone() == (10 * one, 10)


def test_sqlite_identity_recall_refreshes_the_age_of_an_entry_seen_again(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = SqliteState(tmp_path, clock=lambda: now[0]).identity(PRESET, IdentityLimits(ttl_seconds=30 * 86400))
    memory = IdentityMemory(keys=("userId",), store=store)
    memory.remember({"userId": "active"}, {"email": "active@x.co"})
    memory.remember({"userId": "gone"}, {"email": "gone@x.co"})
    now[0] += 20 * 86400
    assert memory.recall({"userId": "active"}) == {"email": "active@x.co"}  # a lead event: seen again
    now[0] += 20 * 86400
    assert memory.recall({"userId": "gone"}) == {}  # 40 days unseen: expired, even before any purge
    assert memory.recall({"userId": "active"}) == {"email": "active@x.co"}
    memory.remember({"userId": "new"}, {"email": "new@x.co"})  # a write purges what expired
    assert store.usage()[1] == 2


def test_identity_is_written_through_at_every_identify(tmp_path: Path) -> None:
    """Another connection (another process) sees an identify at once, before any close."""
    preset = load_preset(PRESET)
    engine = Engine(preset, resolve(preset.settings, settings("http://127.0.0.1:9"), require=True), state=tmp_path)
    engine.pipeline.prepare({"type": "identify", "userId": "u1", "traits": {"email": "jane@acme.com"}})
    other = SqliteState(tmp_path).identity(PRESET, IdentityLimits())
    assert other.recall("userId", "u1") is not None
    assert dict(other.recall("userId", "u1").traits) == {"email": "jane@acme.com"}  # type: ignore[union-attr]


def test_the_preset_declares_the_bounds_and_the_dedupe_window(tmp_path: Path) -> None:
    text = BUILTIN.read_text(encoding="utf-8")
    text = text.replace(
        "  remember: [userId, anonymousId]\n",
        "  remember: [userId, anonymousId]\n  ttl_days: 7\n  max_bytes: 65536\n"
        "  max_trait_bytes: 256\n  memory_limit: 10\n",
    )  # the old key is accepted and ignored
    text = text.replace("  concurrency: 8\n", "  concurrency: 8\n  dedupe_window_seconds: 600\n")
    path = tmp_path / "bounded.yaml"
    path.write_text(text, encoding="utf-8")
    engine = Engine.from_preset(str(path), settings("http://127.0.0.1:9"), state=tmp_path / "state")
    identity, journal = engine.identity.inner, engine.journal.inner
    assert identity.limits == IdentityLimits(ttl_seconds=7 * 86400, max_bytes=65536)  # type: ignore[attr-defined]
    assert engine.pipeline.memory.max_trait_bytes == 256
    assert journal.window == 600  # type: ignore[attr-defined]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("max_bytes: 65536", "max_bytes: 0"), encoding="utf-8")
    with pytest.raises(PresetError, match=r"bad.yaml:\d+:\d+: identity.max_bytes"):
        load_preset(str(bad))


# --------------------------------------------------------------------------
# delivery journal
# --------------------------------------------------------------------------


def test_journal_keys_are_the_message_id_or_a_hash_of_the_whole_event() -> None:
    assert event_key({"type": "track", "messageId": "abc"}) == "m:abc"
    same = event_key({"type": "track", "event": "Signed Up", "userId": "u1"})
    assert same == event_key({"userId": "u1", "event": "Signed Up", "type": "track"})  # key order does not matter
    assert same.startswith("h:") and same != event_key({"type": "track", "event": "Signed Up", "userId": "u2"})


def test_sqlite_journal_forgets_deliveries_older_than_the_window(tmp_path: Path) -> None:
    now = [1_000_000.0]
    state = SqliteState(tmp_path, clock=lambda: now[0])
    journal = state.journal(PRESET, window_seconds=3600)
    journal.record("m:old")
    now[0] += 1800
    journal.record("m:recent")
    assert journal.delivered_at("m:old") == 1_000_000.0
    assert state.journal("other/preset", 3600).delivered_at("m:old") is None  # keyed by preset
    now[0] += 1801
    assert journal.delivered_at("m:old") is None
    assert journal.delivered_at("m:recent") == 1_001_800.0
    now[0] += 601  # past the purge interval: the next write removes what left the window
    journal.record("m:new")
    assert len(journal) == 2
    assert state.journal("off/preset", 0).delivered_at("m:new") is None


def test_an_event_already_delivered_is_not_sent_again_by_the_next_engine(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Outcome], list[Outcome], dict[str, Any]]:
        runner, base = await sandbox()
        try:
            async with Engine.from_preset(PRESET, settings(base), state=tmp_path) as engine:
                first = [o async for o in engine.process_many([lead(1), lead(2)])]
            async with Engine.from_preset(PRESET, settings(base), state=tmp_path) as engine:
                second = [o async for o in engine.process_many([lead(1), lead(2), lead(3)])]
            return first, second, await sandbox_state(base)
        finally:
            await runner.cleanup()

    first, second, state = asyncio.run(scenario())
    assert [o.outcome for o in first + second] == [oc.DELIVERED] * 5
    assert [o.attempts for o in second] == [0, 0, 1]
    assert "already delivered at" in (second[0].detail or "") and "(delivery journal)" in (second[0].detail or "")
    assert second[0].response is None and second[0].request is not None
    assert state["statuses"] == [201, 201, 201]  # lead 1 and 2 once each, then lead 3


def test_a_duplicate_in_flight_waits_for_the_first_copy_instead_of_sending_twice() -> None:
    twice = lead(1)
    no_id = {k: v for k, v in lead(2).items() if k != "messageId"}

    async def scenario() -> tuple[list[Outcome], dict[str, Any]]:
        runner, base = await sandbox(faults=["delay:0.3"])
        try:
            async with Engine.from_preset(PRESET, settings(base)) as engine:
                outcomes = [o async for o in engine.process_many([twice, dict(twice), no_id, dict(no_id)])]
            return outcomes, await sandbox_state(base)
        finally:
            await runner.cleanup()

    outcomes, state = asyncio.run(scenario())
    assert [(o.outcome, o.attempts) for o in outcomes] == [(oc.DELIVERED, 1), (oc.DELIVERED, 0)] * 2
    assert state["statuses"] == [201, 201]


def test_a_zero_dedupe_window_sends_every_copy(tmp_path: Path) -> None:
    preset = load_preset(PRESET)
    from dataclasses import replace

    no_dedupe = replace(preset, delivery=replace(preset.delivery, dedupe_window_seconds=0))

    async def scenario() -> dict[str, Any]:
        runner, base = await sandbox()
        try:
            async with Engine.from_preset(no_dedupe, settings(base), state=tmp_path) as engine:
                [o async for o in engine.process_many([lead(1), lead(1)])]
            return await sandbox_state(base)
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario())["statuses"] == [201, 422, 200, 200]  # sent twice; the upsert merged the second


def test_a_dead_letter_whose_event_was_delivered_since_is_removed_without_sending(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Outcome], list[Outcome], int, dict[str, Any]]:
        runner, base = await sandbox(faults=[500] * 5)
        try:
            async with Engine.from_preset(PRESET, settings(base), state=tmp_path, sleep=no_wait) as engine:
                dead = await engine.process(lead(1))
                letters = engine.dead_letters.entries()
                again = await engine.process(lead(1))  # the producer re-sends it: delivered this time
                gone = engine.dead_letters.entries() == []  # its delivery removed the letter
                # A stale letter all the same (its removal was lost with a power cut, or the store
                # predates removal): the replay finds it delivered and removes it unsent.
                engine.dead_letters.add(letters[0])
                replayed = await engine.replay_dead_letters()
                left = len(engine.dead_letters.entries())
            return [dead, again], replayed, left, {**await sandbox_state(base), "gone": gone}
        finally:
            await runner.cleanup()

    first, replayed, left, state = asyncio.run(scenario())
    assert [o.outcome for o in first] == [oc.DEAD_LETTERED, oc.DELIVERED]
    assert state["gone"]
    assert [(o.outcome, o.attempts) for o in replayed] == [(oc.DELIVERED, 0)]
    assert left == 0
    assert state["statuses"] == [500] * 5 + [201]  # the replay sent nothing


# --------------------------------------------------------------------------
# dead letters
# --------------------------------------------------------------------------


def letter(letter_id: str, key: str | None, preset: str = PRESET, **extra: Any) -> dict[str, Any]:
    return {"id": letter_id, "preset": preset, "key": key, "messageId": letter_id, **extra}


def test_dead_letters_change_one_letter_at_a_time_so_two_processes_never_undo_each_other(tmp_path: Path) -> None:
    replay = SqliteState(tmp_path).dead_letters()
    run = SqliteState(tmp_path).dead_letters()  # another connection, as another process has
    run.add(letter("a", "m:a"))
    run.add(letter("b", "m:b"))
    listed = replay.entries(PRESET)  # a replay starts
    run.add(letter("c", "m:c"))  # a run adds a letter meanwhile
    replay.remove(listed[0]["id"])  # delivered
    replay.update({**listed[1], "cause": "http_500"})  # failed again
    assert [(e["id"], e.get("cause")) for e in run.entries(PRESET)] == [("b", "http_500"), ("c", None)]


def test_the_same_event_dead_lettered_twice_is_one_letter(tmp_path: Path) -> None:
    store = SqliteState(tmp_path).dead_letters()
    store.add(letter("first", "m:1", attempts=5))
    store.add(letter("second", "m:1", attempts=3))
    store.add(letter("other-preset", "m:1", preset="x/y"))
    assert [(e["id"], e["attempts"]) for e in store.entries(PRESET)] == [("first", 3)]
    assert len(store.entries()) == 2
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600
        assert conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 2


# --------------------------------------------------------------------------
# a full disk
# --------------------------------------------------------------------------


def test_a_full_disk_spends_no_refresh_token_and_loses_no_dead_letter(
    tmp_path: Path, disk: DiskFull, state_log: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[list[Outcome], list[dict[str, Any]], dict[str, Any], list[Outcome], dict[str, Any]]:
        runner, base = await sandbox()
        try:
            engine = Engine.from_preset(PRESET, settings(base), state=tmp_path, sleep=no_wait)
            async with engine:
                disk.on = True  # the disk fills up before the first token is minted
                outcomes = [o async for o in engine.process_many([lead(i) for i in range(20)])]
                during = await sandbox_state(base)
                disk.on = False  # space is freed before the run ends: close writes what was kept
            letters = SqliteState(tmp_path).dead_letters().entries(PRESET)
            async with Engine.from_preset(PRESET, settings(base), state=tmp_path, sleep=no_wait) as engine:
                replayed = await engine.replay_dead_letters()
            return outcomes, letters, during, replayed, await sandbox_state(base)
        finally:
            await runner.cleanup()

    outcomes, letters, during, replayed, after = asyncio.run(scenario())
    assert {o.outcome for o in outcomes} == {oc.DEAD_LETTERED}
    assert {o.cause for o in outcomes} == {"auth_unavailable"}
    assert all("kept in memory" in (o.detail or "") for o in outcomes)
    assert during["token_statuses"] == []  # the refresh token was never spent
    assert sorted(e["messageId"] for e in letters) == sorted(f"m{i}" for i in range(20))  # none lost
    assert disk.refused > 0
    assert "could not write the dead letters" in state_log.text  # said loudly
    assert "disk full" in state_log.text
    # The next run is not "reauthorisation_required": the configured token is still the live one.
    assert [o.outcome for o in replayed] == [oc.DELIVERED] * 20
    assert after["token_statuses"] == [200] and len(after["prospects"]) == 20


def test_a_rotated_token_the_disk_refuses_is_used_from_memory_and_saved_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_log: pytest.LogCaptureFixture
) -> None:
    original_save = SqliteTokenStore.save
    full = [False]

    def save(store: SqliteTokenStore, tokens: StoredTokens, configured: str) -> None:
        if full[0]:  # the disk fills up between the writability check and the save
            raise StateWriteError("database or disk is full", full=True)
        original_save(store, tokens, configured)

    monkeypatch.setattr(SqliteTokenStore, "save", save)

    async def scenario() -> tuple[list[Outcome], StoredTokens | None, list[Outcome], dict[str, Any]]:
        runner, base = await sandbox(mint_limit=0)
        try:
            async with Engine.from_preset(PRESET, settings(base), state=tmp_path, sleep=no_wait) as engine:
                full[0] = True
                outcomes = [await engine.process(lead(1))]
                unsaved = SqliteState(tmp_path).tokens("cid").load(REFRESH)
                outcomes.append(await engine.process(lead(2)))  # the rotated token lives in memory meanwhile
                full[0] = False
                async with aiohttp.ClientSession() as admin:  # the access token expires: refresh with the kept token
                    await admin.post(f"{base}/_sandbox/expire-tokens")
                outcomes.append(await engine.process(lead(3)))
            async with Engine.from_preset(PRESET, settings(base), state=tmp_path, sleep=no_wait) as engine:
                async with aiohttp.ClientSession() as admin:
                    await admin.post(f"{base}/_sandbox/expire-tokens")
                later = [await engine.process(lead(4))]
            return outcomes, unsaved, later, await sandbox_state(base)
        finally:
            await runner.cleanup()

    outcomes, unsaved, later, state = asyncio.run(scenario())
    assert unsaved is None  # the write really failed
    assert [o.outcome for o in outcomes + later] == [oc.DELIVERED] * 4
    assert state["token_statuses"] == [200, 200, 200]  # never an invalid_grant
    assert "the rotated refresh token could not be saved" in state_log.text
    assert "can be written again" in state_log.text


def test_a_rotated_token_the_disk_never_takes_is_reported_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_log: pytest.LogCaptureFixture
) -> None:
    def save(store: SqliteTokenStore, tokens: StoredTokens, configured: str) -> None:
        raise StateWriteError("database or disk is full", full=True)

    monkeypatch.setattr(SqliteTokenStore, "save", save)
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)
        await asyncio.sleep(0)

    async def scenario() -> Outcome:
        runner, base = await sandbox()
        try:
            async with Engine.from_preset(PRESET, settings(base), state=tmp_path, sleep=fake_sleep) as engine:
                return await engine.process(lead(1))
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()).outcome == oc.DELIVERED
    assert sum(slept) >= 30  # close kept retrying for a while
    assert "could NOT be saved; the connection must be re-authorised" in state_log.text


def test_a_kept_token_wins_over_the_older_one_on_disk_for_a_store_without_a_writability_check() -> None:
    """Adopting the stored (already rotated-away) token would make the next refresh an invalid_grant."""

    class HostStore(MemoryTokenStore):
        full = False

        def save(self, tokens: StoredTokens, configured: str) -> None:
            if self.full:
                raise OSError(28, "No space left on device")
            super().save(tokens, configured)

    inner = HostStore()
    store = BufferedTokenStore(inner)
    store.save(StoredTokens("rotated-1", "access-1", 1.0), REFRESH)
    inner.full = True
    store.save(StoredTokens("rotated-2", "access-2", 2.0), REFRESH)
    assert inner.load(REFRESH) == StoredTokens("rotated-1", "access-1", 1.0)
    assert store.load(REFRESH) == StoredTokens("rotated-2", "access-2", 2.0)
    assert store.check_writable() is False
    inner.full = False
    assert store.load(REFRESH) == StoredTokens("rotated-2", "access-2", 2.0)
    assert inner.load(REFRESH) == StoredTokens("rotated-2", "access-2", 2.0)  # written as soon as it could be
    assert len(store.pending) == 0


# --------------------------------------------------------------------------
# close drains in-flight deliveries
# --------------------------------------------------------------------------


def test_close_waits_for_deliveries_in_flight_and_journals_them(tmp_path: Path) -> None:
    arrived: list[int] = []
    release = asyncio.Event()

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "access-1", "expires_in": 7200, "refresh_token": "r1"})

    async def create(request: web.Request) -> web.Response:
        arrived.append(1)
        await release.wait()
        return web.json_response({"data": {"type": "prospect", "id": len(arrived)}}, status=201)

    async def scenario() -> tuple[list[Outcome], bool]:
        app = web.Application()
        app.add_routes([web.post("/oauth/token", token), web.post("/api/v2/prospects", create)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        try:
            engine = Engine.from_preset(PRESET, settings(base), state=tmp_path)
            tasks = [asyncio.create_task(engine.process(lead(i))) for i in range(5)]
            while len(arrived) < 5:
                await asyncio.sleep(0.01)
            closing = asyncio.create_task(engine.close())
            await asyncio.sleep(0.2)
            still_waiting = not closing.done()
            release.set()
            await closing
            return [t.result() for t in tasks], still_waiting
        finally:
            await runner.cleanup()

    outcomes, still_waiting = asyncio.run(scenario())
    assert still_waiting  # close did not return while requests were on the wire
    assert [o.outcome for o in outcomes] == [oc.DELIVERED] * 5
    journal = SqliteState(tmp_path).journal(PRESET, 3600)
    assert all(journal.delivered_at(f"m:m{i}") is not None for i in range(5))


# --------------------------------------------------------------------------
# upgrading from the files of an earlier version
# --------------------------------------------------------------------------


def test_files_of_an_earlier_version_are_imported_once(tmp_path: Path) -> None:
    folder = tmp_path / PRESET
    folder.mkdir(parents=True)
    token_file = folder / f"refresh-token-{fingerprint('cid')}.json"
    token_file.write_text(
        json.dumps(
            {
                "origin": fingerprint(REFRESH),
                "saved_at": 1_700_000_000,
                "refresh_token": "rotated-before-upgrade",
                "access_token": None,
                "access_expires_at": None,
            }
        ),
        encoding="utf-8",
    )
    (folder / "dead-letters.jsonl").write_text(
        json.dumps(
            {
                "id": "old1",
                "preset": PRESET,
                "action": "create_prospect",
                "messageId": "m-old",
                "request": {"method": "POST", "url": "http://x/api/v2/prospects", "headers": {}, "body": {}},
            }
        )
        + "\n{torn line",
        encoding="utf-8",
    )
    (folder / "identity.json").write_text(
        json.dumps([{"key": "userId", "id": "u1", "owner": "u1", "traits": {"email": "jane@acme.com"}}]),
        encoding="utf-8",
    )

    engine = Engine.from_preset(PRESET, settings("http://127.0.0.1:9"), state=tmp_path)
    stored = engine.token_store.load(settings("http://127.0.0.1:9")["refresh_token"])
    assert stored is not None and stored.refresh_token == "rotated-before-upgrade"
    assert [e["id"] for e in engine.dead_letters.entries(PRESET)] == ["old1"]
    assert engine.pipeline.memory.recall({"userId": "u1"}) == {"email": "jane@acme.com"}
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{name}.imported" for name in (token_file.name, "dead-letters.jsonl", "identity.json")
    )

    # A later rotation is never replaced by the old file, even if it comes back.
    SqliteState(tmp_path).tokens("cid").save(StoredTokens("rotated-after-upgrade"), REFRESH)
    (folder / f"{token_file.name}.imported").rename(token_file)
    Engine.from_preset(PRESET, settings("http://127.0.0.1:9"), state=tmp_path)
    assert SqliteState(tmp_path).tokens("cid").load(REFRESH) == StoredTokens("rotated-after-upgrade")
    assert len(SqliteState(tmp_path).dead_letters().entries()) == 1


def test_runs_starting_together_on_a_new_state_directory_all_get_in(tmp_path: Path) -> None:
    """Two runs (or a run and a `dlq replay`) started at once on a directory that does not exist yet.

    SQLite answers "locked" at once, without waiting, to a second switch to
    WAL mode while the first is under way; and each start probes that it can
    write. Many rounds of four at once, because the window is narrow.
    """
    import threading

    from engine.cli.common import UsageError, check_state_dir

    refused: list[str] = []

    def start(directory: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            check_state_dir(str(directory))
            SqliteState(directory).close()
        except (UsageError, OSError) as exc:
            refused.append(str(exc))

    for round_ in range(60):
        directory = tmp_path / f"state-{round_}"
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=start, args=(directory, barrier)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert refused == []


def test_sqlite_keeps_the_token_answers_values_and_opens_a_database_made_without_them(tmp_path: Path) -> None:
    """A state made before token_values existed gets the column on open; its tokens load with no values."""
    db = Database(tmp_path)
    db.conn.execute("ALTER TABLE tokens DROP COLUMN token_values")
    db.conn.execute(
        "INSERT INTO tokens (chain, refresh_token, access_token, access_expires_at, saved_at) "
        "VALUES (?, 'old-refresh', 'old-access', 1.0, 1.0)",
        (SqliteTokenStore(db, "cid").chain(REFRESH),),
    )
    db.close()
    reopened = Database(tmp_path)
    store = SqliteTokenStore(reopened, "cid")
    assert store.load(REFRESH) == StoredTokens("old-refresh", "old-access", 1.0)
    store.save(StoredTokens("rotated-1", "access-1", 2.0, {"api_domain": "https://www.zohoapis.eu"}), REFRESH)
    assert SqliteTokenStore(Database(tmp_path), "cid").load(REFRESH).values == {"api_domain": "https://www.zohoapis.eu"}
    assert sqlite3.connect(str(tmp_path / "state.db")).execute("PRAGMA user_version").fetchone()[0] == 1


# --------------------------------------------------------------------------
# writes that ride in the next transaction (Database.defer)
# --------------------------------------------------------------------------


def _budget_row(directory: Path) -> tuple[Any, ...] | None:
    """The rate budget's row as another process sees it (a connection of its own)."""
    with sqlite3.connect(directory / "state.db") as other:
        return other.execute("SELECT remaining, in_flight FROM rate_budgets WHERE name = 'b'").fetchone()


def test_an_answers_lesson_lands_with_the_journals_record_in_one_transaction(tmp_path: Path) -> None:
    """While delivering, the rate budget learns from an answer without a transaction of its own:
    another process sees the lesson once the journal records the delivery, a moment later."""
    state = SqliteState(tmp_path / "state")
    budget, journal = state.rate_budget("b", 1.0, 10.0), state.journal("p", 3600)

    async def deliver_one() -> tuple[Any, Any]:
        assert budget.take() is None
        budget.learn(42.0, "r1", None, None)  # the answer said: 42 left in window r1
        before = _budget_row(tmp_path / "state")
        journal.record("m:1")
        return before, _budget_row(tmp_path / "state")

    before, after = asyncio.run(deliver_one())
    assert before == (None, 1)  # taken, in flight, nothing learnt yet
    assert after == (42.0, 0)  # learnt, in the journal's transaction
    assert journal.delivered_at("m:1") is not None
    state.close()


def test_a_lesson_nothing_else_carries_lands_within_a_moment_or_at_close(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "state")
    budget = state.rate_budget("b", 1.0, 10.0)

    async def learn_and_wait() -> tuple[Any, Any]:
        budget.take()
        budget.learn(7.0, "r1", None, None)
        held = _budget_row(tmp_path / "state")
        await asyncio.sleep(0.2)  # past DEFER_SECONDS: the timer writes it
        return held, _budget_row(tmp_path / "state")

    held, landed = asyncio.run(learn_and_wait())
    assert held == (None, 1) and landed == (7.0, 0)

    async def learn_then_close() -> None:
        budget.take()
        budget.learn(3.0, "r1", None, None)
        state.close()

    asyncio.run(learn_then_close())
    assert _budget_row(tmp_path / "state") == (3.0, 0)


def test_a_loop_that_ended_with_its_timer_armed_does_not_hold_the_next_loops_lesson(tmp_path: Path) -> None:
    """Each run of an event loop arms a timer of its own: one left armed on a loop that has ended (it never
    fires) must not keep the next loop's lesson from landing within a moment."""
    state = SqliteState(tmp_path / "state")
    budget = state.rate_budget("b", 1.0, 10.0)

    async def learn(remaining: float) -> None:
        budget.take()
        budget.learn(remaining, "r1", None, None)

    asyncio.run(learn(5.0))  # ended at once: its timer never fired

    async def learn_and_wait() -> Any:
        await learn(3.0)
        await asyncio.sleep(0.2)  # past DEFER_SECONDS: this loop's timer writes it
        return _budget_row(tmp_path / "state")

    assert asyncio.run(learn_and_wait()) == (3.0, 0)
    state.close()


def test_a_take_sees_the_lesson_learnt_before_it(tmp_path: Path) -> None:
    """The lesson waits for the next write, and the next take is one: it is applied first, in order."""
    state = SqliteState(tmp_path / "state")
    budget = state.rate_budget("b", 1.0, 10.0)

    async def two_requests() -> Any:
        budget.take()
        budget.learn(1.0, "r1", 60.0, None)  # one left until the reset in a minute
        assert budget.take() is None  # the last one of the window
        return budget.take()  # spent: wait for the reset

    wait = asyncio.run(two_requests())
    assert wait == pytest.approx(60.0, abs=1.0)
    state.close()


def test_a_discarded_dead_letter_is_gone_for_every_read_of_this_process(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "state")
    letters = state.dead_letters()
    letters.add({"id": "l1", "preset": "p", "key": "m:1", "event": {}})

    async def deliver_again() -> tuple[int, int]:
        letters.discard("p", "m:1")  # delivered now: the letter an earlier run left is obsolete
        return letters.count("p"), len(letters.entries("p"))

    assert asyncio.run(deliver_again()) == (0, 0)
    state.close()
    with sqlite3.connect(tmp_path / "state" / "state.db") as other:
        assert other.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] == 0


def test_deliveries_that_end_in_one_turn_of_the_loop_are_recorded_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: one transaction for the deliveries that end together, and each caller goes on
    (hands its outcome out) only once its entry is in the file, as another process sees it."""
    from engine.state.buffered import BufferedJournal

    state = SqliteState(tmp_path / "state")
    journal = BufferedJournal(state.journal("p", 3600))
    transactions = []
    original = Database.write

    def write(db: Database, *, durable: bool = False) -> Any:
        transactions.append(durable)
        return original(db, durable=durable)

    monkeypatch.setattr(Database, "write", write)

    def in_the_file() -> int:
        with sqlite3.connect(tmp_path / "state" / "state.db") as other:
            return int(other.execute("SELECT COUNT(*) FROM journal").fetchone()[0])

    async def deliver(key: str) -> int:
        await journal.record_soon(key)
        return in_the_file()  # what the outcome's reader could check now

    async def scenario() -> list[int]:
        return list(await asyncio.gather(*(deliver(f"m:{i}") for i in range(5))))

    assert asyncio.run(scenario()) == [5] * 5
    assert len(transactions) == 1
    assert all(journal.delivered_at(f"m:{i}") is not None for i in range(5))
    state.close()


def test_a_group_the_disk_refuses_is_kept_entry_by_entry_and_still_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.state.buffered import BufferedJournal

    state = SqliteState(tmp_path / "state")
    journal = BufferedJournal(state.journal("p", 3600))
    full = DiskFull(monkeypatch)
    full.on = True

    async def scenario() -> None:
        await asyncio.gather(*(journal.record_soon(f"m:{i}") for i in range(3)))

    asyncio.run(scenario())
    assert len(journal.pending) == 3
    assert all(journal.delivered_at(f"m:{i}") is not None for i in range(3))  # kept in memory, answered
    full.on = False
    assert journal.pending.flush()
    assert len(state.journal("p", 3600)) == 3
    state.close()
