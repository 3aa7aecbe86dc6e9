"""The Redis stores against a real redis-server: the same contracts as the SQLite ones, across processes.

Each "worker" here is a separate client (several clients, or threads, or
processes), because what Redis adds is sharing: two workers merging the same
person, two refreshing one token, two spending one rate budget.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio
from aiohttp.test_utils import TestServer

from engine.compile.compiler import load_preset
from engine.delivery.rate_limit import RateLimiter, bucket_shape
from engine.language.settings import resolve
from engine.pipeline.identity import IdentityMemory
from engine.pipeline.prepare import Pipeline
from engine.service.intake import RUNNER_OPTIONS, Intake, IntakeConfig, create_app
from engine.service.metrics import Metrics
from engine.state.identity import IdentityLimits, Slot
from engine.state.redis import RedisState
from engine.state.token_store import StoredTokens
from fakes import FakeTime
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from service_helpers import until

PRESET = "outreach/lead-capture"


def state(url: str, **options: Any) -> RedisState:
    return RedisState(url, **options)


# -- identity ---------------------------------------------------------------------


def test_identity_follows_the_merge_rule_of_every_store(redis_url: str) -> None:
    store = state(redis_url).identity(PRESET, IdentityLimits())
    store.merge([Slot("userId", "u1"), Slot("anonymousId", "dev-1", True)], {"email": "a@x.io", "title": "CTO"}, "u1")
    store.merge([Slot("userId", "u1")], {"title": "CEO"}, "u1")
    assert dict(store.recall("userId", "u1").traits) == {"email": "a@x.io", "title": "CEO"}
    # A shared device: another person's identify replaces the entry, never merges into it.
    store.merge([Slot("anonymousId", "dev-1", True)], {"email": "b@x.io"}, "u2")
    recalled = store.recall("anonymousId", "dev-1")
    assert (dict(recalled.traits), recalled.owner) == ({"email": "b@x.io"}, "u2")
    store.forget([Slot("userId", "u1")])
    assert store.recall("userId", "u1") is None
    # Another worker (its own connection) sees the same memory.
    assert state(redis_url).identity(PRESET, IdentityLimits()).recall("anonymousId", "dev-1") is not None


def test_merges_made_together_land_as_if_made_one_after_the_other(redis_url: str) -> None:
    """A request's identifies are merged at once: the result is the merge rule applied in order."""
    store = state(redis_url).identity(PRESET, IdentityLimits())
    store.merge([Slot("userId", "u0")], {"email": "zero@x.io"}, "u0")  # remembered before the request
    store.merge_many(
        [
            ([Slot("userId", "u1"), Slot("anonymousId", "dev-1", True)], {"email": "a@x.io", "title": "CTO"}, "u1"),
            ([Slot("userId", "u1")], {"title": "CEO"}, "u1"),  # a later identify of the same person wins
            ([Slot("anonymousId", "dev-1", True)], {"email": "b@x.io"}, "u2"),  # the device changes hands
            ([Slot("anonymousId", "dev-1", True)], {"phone": "+33612345678"}, "u2"),  # and merges for its owner
            ([Slot("userId", "u0")], {"title": "VP"}, "u0"),  # over what was already stored
        ]
    )
    assert dict(store.recall("userId", "u1").traits) == {"email": "a@x.io", "title": "CEO"}
    device = store.recall("anonymousId", "dev-1")
    assert (dict(device.traits), device.owner) == ({"email": "b@x.io", "phone": "+33612345678"}, "u2")
    assert dict(store.recall("userId", "u0").traits) == {"email": "zero@x.io", "title": "VP"}
    # Each entry is counted once against the bounds, at its final size.
    used, entries = store.usage()
    assert entries == 3
    single = state(redis_url, prefix="again").identity(PRESET, IdentityLimits())
    for slots, traits, owner in [
        ([Slot("userId", "u0")], {"email": "zero@x.io"}, "u0"),
        ([Slot("userId", "u1"), Slot("anonymousId", "dev-1", True)], {"email": "a@x.io", "title": "CTO"}, "u1"),
        ([Slot("userId", "u1")], {"title": "CEO"}, "u1"),
        ([Slot("anonymousId", "dev-1", True)], {"email": "b@x.io"}, "u2"),
        ([Slot("anonymousId", "dev-1", True)], {"phone": "+33612345678"}, "u2"),
        ([Slot("userId", "u0")], {"title": "VP"}, "u0"),
    ]:
        single.merge(slots, traits, owner)
    assert single.usage() == (used, entries)


def test_merges_made_together_take_two_round_trips(redis_url: str) -> None:
    """Ten identifies of a request: one pipelined read and one script, not two round trips each."""
    store = state(redis_url).identity(PRESET, IdentityLimits())
    store.merge([Slot("userId", "warm")], {"email": "w@x.io"}, "warm")  # loads the script
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    store.merge_many([([Slot("userId", f"u{i}")], {"email": f"u{i}@x.io"}, f"u{i}") for i in range(10)])
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 2  # the read, then the compare-and-write
    assert stats["cmdstat_hmget"]["calls"] == 2 * 10  # each entry read, then checked again before it is written


def test_a_requests_identifies_are_merged_together_and_a_refusal_among_them_forgets_in_order(redis_url: str) -> None:
    """What ``serve --redis`` does with the identifies of one request, before its 200."""
    preset = load_preset(PRESET)
    values = resolve(preset.settings, {"client_id": "app", "client_secret": "cs", "refresh_token": "rt"}, require=True)
    store = state(redis_url).identity(PRESET, IdentityLimits.of(preset.identity))
    pipeline = Pipeline(preset, values, IdentityMemory.for_preset(preset.identity, store))
    store.merge([Slot("userId", "warm")], {"email": "w@x.io"}, "warm")  # loads the script

    def identify(user: str, marketing: bool, **traits: str) -> dict[str, Any]:
        consent = {"consent": {"canonical": {"marketing": marketing}}}
        return {"type": "identify", "userId": user, "traits": traits, "context": consent}

    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    pipeline.learn_identities(
        [
            identify("u1", True, email="a@x.io"),
            identify("u1", True, title="CTO"),
            identify("u2", True, email="b@x.io"),
            identify("u2", False),  # consent withdrawn: what was remembered for u2 is forgotten
            identify("u3", True, email="c@x.io"),
            identify("u2", True, title="CEO"),  # given again later: remembered afresh
        ]
    )
    assert dict(store.recall("userId", "u1").traits) == {"email": "a@x.io", "title": "CTO"}
    assert dict(store.recall("userId", "u2").traits) == {"title": "CEO"}
    assert dict(store.recall("userId", "u3").traits) == {"email": "c@x.io"}
    # The three before the refusal read and written together, the two after it too: two round trips each.
    assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == 2 * 2


def test_concurrent_merges_of_one_person_from_many_workers_all_land(redis_url: str) -> None:
    """Twenty workers each add one trait to the same person at once: a lost update would drop one."""
    barrier = threading.Barrier(20)

    def work(i: int) -> None:
        store = state(redis_url).identity(PRESET, IdentityLimits())
        barrier.wait()
        for round_ in range(5):
            store.merge([Slot("userId", "same-person")], {f"t{i}": round_}, "same-person")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    traits = state(redis_url).identity(PRESET, IdentityLimits()).recall("userId", "same-person").traits
    assert traits == {f"t{i}": 4 for i in range(20)}


def test_identity_is_bounded_by_bytes_least_recently_seen_first_and_by_age(redis_url: str) -> None:
    clock = FakeTime(start=1_000_000.0)
    backend = state(redis_url)
    from engine.state.redis.identity import RedisIdentityStore

    store = RedisIdentityStore(
        backend.client, backend.keys, PRESET, IdentityLimits(ttl_seconds=100, max_bytes=300), clock=clock.monotonic
    )
    for i in range(10):
        store.merge([Slot("userId", f"u{i}")], {"email": f"user{i}@example.com"}, f"u{i}")
        clock.now += 1
    used, entries = store.usage()
    assert used <= 300 and 0 < entries < 10
    assert store.recall("userId", "u9") is not None and store.recall("userId", "u0") is None
    clock.now += 101
    assert store.recall("userId", "u9") is None  # older than the age bound
    store.merge([Slot("userId", "new")], {"email": "new@example.com"}, "new")
    assert store.usage()[1] == 1  # the expired ones were purged by the next write


def test_a_worker_whose_intake_writes_identity_only_reads_it(redis_url: str) -> None:
    writer = state(redis_url).identity(PRESET, IdentityLimits())
    reader = state(redis_url, identity_writes=False).identity(PRESET, IdentityLimits())
    writer.merge([Slot("userId", "u1")], {"email": "new@x.io"}, "u1")
    reader.merge([Slot("userId", "u1")], {"email": "older@x.io"}, "u1")  # a late replay of an older identify
    reader.forget([Slot("userId", "u1")])
    assert dict(reader.recall("userId", "u1").traits) == {"email": "new@x.io"}


def test_a_batch_read_ahead_answers_each_recall_once_and_a_write_here_makes_it_stale(redis_url: str) -> None:
    store, intake = (
        state(redis_url).identity(PRESET, IdentityLimits()),
        state(redis_url).identity(PRESET, IdentityLimits()),
    )
    intake.merge([Slot("userId", "u1")], {"title": "CTO"}, "u1")
    store.prefetch([("userId", "u1"), ("userId", "u2")])
    intake.merge([Slot("userId", "u1")], {"title": "CEO"}, "u1")  # after the read ahead
    first = store.recall("userId", "u1")
    assert first is not None and first.traits == {"title": "CTO"}  # as read ahead, once
    again = store.recall("userId", "u1")
    assert again is not None and again.traits == {"title": "CEO"}
    assert store.recall("userId", "u2") is None
    store.prefetch([("userId", "u2")])
    store.merge([Slot("userId", "u2")], {"title": "CFO"}, "u2")  # this process's own write wins
    mine = store.recall("userId", "u2")
    assert mine is not None and mine.traits == {"title": "CFO"}
    worker = state(redis_url, identity_writes=False).identity(PRESET, IdentityLimits())
    worker.prefetch([("userId", "u1")])  # a worker's read-only view reads ahead too
    seen = worker.recall("userId", "u1")
    assert seen is not None and seen.traits == {"title": "CEO"}


# -- journal and dead letters --------------------------------------------------------


def test_the_journal_remembers_deliveries_for_its_window_across_workers(redis_url: str) -> None:
    first, second = state(redis_url).journal(PRESET, 60), state(redis_url).journal(PRESET, 60)
    assert second.delivered_at("m:1") is None
    first.record("m:1", at=time.time() - 10)
    assert second.delivered_at("m:1") == pytest.approx(time.time() - 10, abs=1)
    first.record("m:old", at=time.time() - 61)
    assert second.delivered_at("m:old") is None
    assert state(redis_url).journal("other/preset", 60).delivered_at("m:1") is None
    off = state(redis_url).journal(PRESET, 0)
    off.record("m:2")
    assert off.delivered_at("m:2") is None


def test_dead_letters_keep_one_letter_per_event_and_change_one_at_a_time(redis_url: str) -> None:
    letters, other = state(redis_url).dead_letters(), state(redis_url).dead_letters()
    letters.add({"id": "L1", "preset": PRESET, "key": "m:1", "cause": "timeout"})
    other.add({"id": "L2", "preset": PRESET, "key": "m:1", "cause": "http_503"})  # same event: replaced, id kept
    other.add({"id": "L3", "preset": "hubspot/contacts", "key": "m:1", "cause": "timeout"})
    letters.add({"id": "L4", "preset": PRESET, "key": None, "cause": "timeout"})
    assert [(e["id"], e["cause"]) for e in other.entries(PRESET)] == [("L1", "http_503"), ("L4", "timeout")]
    assert len(other.entries()) == 3
    letters.update({"id": "L1", "preset": PRESET, "key": "m:1", "cause": "http_500"})
    letters.update({"id": "gone", "preset": PRESET, "key": "m:9", "cause": "x"})  # not there: nothing added
    letters.remove("L4")
    letters.remove("L4")
    assert [(e["id"], e["cause"]) for e in other.entries(PRESET)] == [("L1", "http_500")]
    letters.remove("L1")
    other.add({"id": "L5", "preset": PRESET, "key": "m:1", "cause": "timeout"})  # a new letter for the event
    assert [e["id"] for e in letters.entries(PRESET)] == ["L5"]
    # A worker delivered the event since (a re-posted copy): its letter goes, other presets' stay.
    other.discard(PRESET, "m:1")
    other.discard(PRESET, "m:404")  # no letter: nothing happens
    assert letters.entries(PRESET) == [] and [e["id"] for e in letters.entries()] == ["L3"]


def test_recording_a_delivery_finds_the_events_letter_in_the_same_call_and_discard_removes_it(redis_url: str) -> None:
    worker = state(redis_url)
    letters, journal = worker.dead_letters(), worker.journal(PRESET, 60)
    state(redis_url).dead_letters().add({"id": "L1", "preset": PRESET, "key": "m:1", "cause": "timeout"})
    journal.record("m:1")
    journal.record("m:2")
    client = redis.Redis.from_url(redis_url)
    client.hdel("signal:dlq:keys", f"{PRESET}\0m:1")  # the index is gone now: discard goes by what record found
    letters.discard(PRESET, "m:1")
    letters.discard(PRESET, "m:2")  # record found none: nothing to remove, nothing asked
    assert state(redis_url).dead_letters().entries() == []
    # What record found is used once: a later discard asks Redis again.
    state(redis_url).dead_letters().add({"id": "L2", "preset": PRESET, "key": "m:2", "cause": "timeout"})
    letters.discard(PRESET, "m:2")
    assert state(redis_url).dead_letters().entries() == []


def test_a_batch_read_ahead_answers_each_event_once_then_the_journal_is_asked_again(redis_url: str) -> None:
    journal, other = state(redis_url).journal(PRESET, 60), state(redis_url).journal(PRESET, 60)
    other.record("m:1", at=time.time() - 5)
    journal.prefetch(["m:1", "m:2"])
    other.record("m:2")  # (no worker may do this while the batch's locks are held; here it shows what is read)
    assert journal.delivered_at("m:1") == pytest.approx(time.time() - 5, abs=1)
    assert journal.delivered_at("m:2") is None  # as read ahead
    assert journal.delivered_at("m:2") is not None  # a second copy of the event asks Redis


def test_what_a_worker_learns_goes_with_its_next_call_or_within_a_few_milliseconds(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    worker = state(redis_url)
    budget, journal = worker.rate_budget("b", 10, 10), worker.journal(PRESET, 60)
    reset = str(int(time.time()) + 3600)

    async def main() -> None:
        assert budget.take() is None
        budget.learn(7, reset, 3600, None)
        assert client.hget("signal:rate:b", "remaining") is None  # waiting for the next call
        client.script_flush()  # a restarted server: NOSCRIPT, loaded again, sent again
        journal.record("m:1")  # carries it, in one pipeline
        assert client.hget("signal:rate:b", "remaining") == b"7"
        assert journal.delivered_at("m:1") is not None
        assert budget.take() is None
        budget.learn(3, reset, 3600, None)
        for _ in range(100):  # on its own, shortly (DELAY_SECONDS)
            await asyncio.sleep(0.01)
            if client.hget("signal:rate:b", "remaining") == b"3":
                break
        assert client.hget("signal:rate:b", "remaining") == b"3"

    asyncio.run(main())
    budget.learn(2, reset, 3600, None)  # outside an event loop: at once
    assert client.hget("signal:rate:b", "remaining") == b"2"


def test_a_deliverys_record_goes_with_the_next_take_and_the_outcome_waits_for_its_answer(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One round trip a lead: the journal's record rides with the next take of the budget, and the
    caller (who hands the outcome out next) goes on only once Redis has it, as another worker sees it."""
    from engine.state.buffered import BufferedJournal
    from engine.state.redis import deferred

    monkeypatch.setattr(deferred, "DELAY_SECONDS", 3600.0)  # no timer in this test's way: only the take
    worker = state(redis_url)
    budget, journal = worker.rate_budget("b", 10, 10), BufferedJournal(worker.journal(PRESET, 60))
    budget.take()
    journal.record("m:0")  # both scripts loaded (a first call answers NOSCRIPT, then loads them)
    trips: list[int] = []
    call = worker.wire.call
    monkeypatch.setattr(worker.wire, "call", lambda commands: trips.append(len(commands)) or call(commands))
    stored = state(redis_url).journal(PRESET, 60)

    async def main() -> None:
        recording = asyncio.ensure_future(journal.record_soon("m:1"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not recording.done() and stored.delivered_at("m:1") is None  # waiting for the next round trip
        assert budget.take() is None
        assert trips == [2]  # the record and the take: one round trip
        assert stored.delivered_at("m:1") is not None
        await recording

    asyncio.run(main())


def test_a_journal_read_made_while_a_record_waits_does_not_hide_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second copy of a delivered event, read into the next batch while the first copy's record still
    waits for a round trip, must find that record once it landed: the batch's journal read (``prefetch``)
    saw nothing yet, and that stale "not delivered" must not be believed (it would deliver the event again)."""
    from engine.state.buffered import BufferedJournal
    from engine.state.redis import deferred

    monkeypatch.setattr(deferred, "DELAY_SECONDS", 3600.0)
    worker = state(redis_url)
    budget, inner = worker.rate_budget("b", 10, 10), worker.journal(PRESET, 60)
    journal = BufferedJournal(inner)
    budget.take()
    journal.record("m:0")  # the scripts loaded

    async def main() -> None:
        recording = asyncio.ensure_future(journal.record_soon("m:1"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        inner.prefetch(["m:1"])  # the next batch's read: the record has not gone yet
        assert budget.take() is None  # the record goes with the take
        await recording
        assert journal.delivered_at("m:1") is not None  # the copy waiting on the lock finds it

    asyncio.run(main())


def test_a_timer_armed_for_calls_gone_since_leaves_a_later_call_its_own_wait(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the timer, armed once, fires every DELAY_SECONDS: what waits then came just before,
    and is left to ride with the next take (its own wait), not sent alone (a round trip each)."""
    from engine.state.redis import deferred

    monkeypatch.setattr(deferred, "DELAY_SECONDS", 3600.0)
    worker = state(redis_url)
    budget = worker.rate_budget("b", 10, 10)
    budget.take()  # the scripts loaded
    trips: list[int] = []
    call = worker.wire.call
    monkeypatch.setattr(worker.wire, "call", lambda commands: trips.append(len(commands)) or call(commands))
    reset = str(int(time.time()) + 3600)

    async def main() -> None:
        budget.learn(7, reset, 3600, None)  # arms the timer
        assert budget.take() is None  # carries it
        budget.learn(6, reset, 3600, None)  # waits, the timer still armed for the first
        worker.deferred._on_timer()  # that timer fires
        assert trips == [2]  # the second was not sent alone
        assert worker.deferred._timer is not None  # its own wait: the timer armed again for it
        assert budget.take() is None
        assert trips == [2, 2]

    asyncio.run(main())


def test_a_record_sent_with_the_next_call_goes_on_its_own_shortly(redis_url: str) -> None:
    from engine.state.buffered import BufferedJournal

    worker = state(redis_url)
    journal = BufferedJournal(worker.journal(PRESET, 60))

    async def main() -> None:
        await asyncio.wait_for(journal.record_soon("m:1"), 10)  # no other call comes: DELAY_SECONDS

    asyncio.run(main())
    assert state(redis_url).journal(PRESET, 60).delivered_at("m:1") is not None


def test_a_record_redis_refuses_is_kept_and_retried_even_when_its_caller_is_cancelled(redis_url: str) -> None:
    from engine.state.buffered import BufferedJournal

    client = redis.Redis.from_url(redis_url)
    worker = state(redis_url)
    journal = BufferedJournal(worker.journal(PRESET, 60))
    client.set("signal:dlq:keys", "not a hash")  # the record script's HGET fails: the record is refused

    async def main() -> None:
        await journal.record_soon("m:1")  # returns: kept in memory
        cancelled = asyncio.ensure_future(journal.record_soon("m:2"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.wait_for(asyncio.gather(cancelled, return_exceptions=True), 10)
        for _ in range(200):  # m:2's round trip goes on its own (DELAY_SECONDS), is refused, and is kept
            if len(journal.pending) == 2:
                break
            await asyncio.sleep(0.01)
        journal.pending.cancel()

    asyncio.run(main())
    assert [op[1] for op in journal.pending.ops] == ["m:1", "m:2"]
    assert journal.delivered_at("m:1") is not None and journal.delivered_at("m:2") is not None
    client.delete("signal:dlq:keys")
    assert journal.pending.flush()
    stored = state(redis_url).journal(PRESET, 60)
    assert stored.delivered_at("m:1") is not None and stored.delivered_at("m:2") is not None


# -- tokens ---------------------------------------------------------------------------


def test_one_refresh_lock_across_workers_released_by_its_owner_and_expiring_if_it_dies(redis_url: str) -> None:
    a, b = state(redis_url).tokens("cid"), state(redis_url).tokens("cid")
    assert a.try_lock() and not b.try_lock()
    b.unlock()  # not the owner: nothing happens
    assert not b.try_lock()
    a.unlock()
    assert b.try_lock()
    b.unlock()
    dying = state(redis_url).tokens("cid")
    dying.lock_seconds = 1.0  # long enough that the next line runs before it expires, even on a loaded machine
    assert dying.try_lock()  # no event loop: no renewal, as if the process had died
    assert not a.try_lock()
    until(a.try_lock, timeout=10, what="the dead owner's lock to expire")
    a.unlock()


def test_the_refresh_lock_is_renewed_while_held_on_the_event_loop(redis_url: str) -> None:
    async def main() -> None:
        holder, other = state(redis_url).tokens("cid"), state(redis_url).tokens("cid")
        holder.lock_seconds = 1.0  # renewed every third of that: a stall under 0.6 s cannot lose it
        assert holder.try_lock()
        await asyncio.sleep(2.5)  # well past its expiry, renewed meanwhile
        assert not other.try_lock()
        holder.unlock()
        assert other.try_lock()
        other.unlock()

    asyncio.run(main())


def test_a_worker_holding_an_older_token_cannot_overwrite_a_newer_one(redis_url: str) -> None:
    a, b = state(redis_url).tokens("cid"), state(redis_url).tokens("cid")
    assert a.load("configured") is None and b.load("configured") is None
    a.save(StoredTokens("rotated-1", "access-1", time.time() + 3600), "configured")
    b.save(StoredTokens("stale-from-b"), "configured")  # b last read the chain before a's rotation
    assert b.load("configured").refresh_token == "rotated-1"
    b.save(StoredTokens("rotated-2"), "configured")  # having read it, b may rotate it
    assert a.load("configured").refresh_token == "rotated-2"
    assert a.load("re-authorised") is None  # a new configured token starts a new chain
    assert state(redis_url).tokens("other-client").load("configured") is None


def test_the_token_answers_values_are_kept_with_the_access_token(redis_url: str) -> None:
    """auth.token_values (an instance_url) come back with the token they were minted with; none stays none."""
    store = state(redis_url).tokens("cid-values")
    store.save(StoredTokens("rotated-1", "access-1", 5.0, {"instance_url": "https://eu7.example.test"}), "configured")
    assert state(redis_url).tokens("cid-values").load("configured") == StoredTokens(
        "rotated-1", "access-1", 5.0, {"instance_url": "https://eu7.example.test"}
    )
    store.save(StoredTokens("rotated-2", "access-2", 6.0), "configured")
    assert state(redis_url).tokens("cid-values").load("configured").values == {}


# -- the shared rate budget --------------------------------------------------------------

HEADERS = {"remaining_header": "X-RateLimit-Remaining", "reset_header": "X-RateLimit-Reset"}


def shared_limiter(url: str, requests: int, per_seconds: float, name: str = PRESET, **options: Any) -> RateLimiter:
    budget = state(url).rate_budget(name, *bucket_shape(requests, per_seconds))
    return RateLimiter(requests, per_seconds, budget=budget, **HEADERS, **options)


def sent(limiter: RateLimiter) -> None:
    """What a worker learnt reaches Redis with its next call, or a few milliseconds later: here, now (the two
    "workers" of these tests share one thread, where the other's calls would not wait for it)."""
    limiter.budget.deferred.flush()  # type: ignore[attr-defined]


def test_three_workers_share_one_bucket_instead_of_spending_it_three_times(redis_url: str) -> None:
    async def main() -> int:
        limiters = [shared_limiter(redis_url, 360, 3600) for _ in range(3)]  # a bucket of 6
        taken = 0

        async def spend(limiter: RateLimiter) -> None:
            nonlocal taken
            while True:
                try:
                    await asyncio.wait_for(limiter.acquire(), 0.3)
                except TimeoutError:
                    return
                taken += 1

        await asyncio.gather(*(spend(limiter) for limiter in limiters))
        return taken

    assert asyncio.run(main()) == 6  # the bucket's capacity, once, not 6 per worker


def test_each_rate_window_is_shared_by_every_worker_on_its_own(redis_url: str, tmp_path: Path) -> None:
    """A daily window beside the burst one: two engines on one Redis spend the daily bucket once, together."""
    from engine.runtime import Engine
    from language_fixtures import ACME_PRESET, write_acme

    windows = (
        "  rate_limit: {requests: 100, per_seconds: 1}\n",
        "  rate_limit:\n    requests: 100\n    per_seconds: 1\n    windows:\n"
        "      - {requests: 86400, per_seconds: 86400}\n",
    )  # a bucket of 60
    preset = str(write_acme(tmp_path, ACME_PRESET, windows))

    async def main() -> int:
        engines = [Engine.from_preset(preset, {"api_key": "k-123456"}, state=state(redis_url)) for _ in range(2)]
        assert engines[0].limiter.windows[0].budget.key != engines[0].limiter.budget.key
        taken = 0

        async def spend(limiter: RateLimiter) -> None:
            nonlocal taken
            while True:
                try:
                    await asyncio.wait_for(limiter.acquire(), 0.3)
                except TimeoutError:
                    return
                taken += 1

        await asyncio.gather(*(spend(engine.limiter) for engine in engines))
        return taken

    assert asyncio.run(main()) == 60  # the daily window's bucket, once for both; the burst one had 100


def test_what_one_worker_learns_from_the_headers_governs_all(redis_url: str) -> None:
    async def main() -> None:
        one, two = shared_limiter(redis_url, 1000, 1), shared_limiter(redis_url, 1000, 1)
        reset = str(int(time.time()) + 3600)
        await one.acquire()
        one.observe({"X-RateLimit-Remaining": "2, 19000", "X-RateLimit-Reset": reset})
        await two.acquire()
        await one.acquire()
        with pytest.raises(asyncio.TimeoutError):  # the window is spent for every worker
            await asyncio.wait_for(two.acquire(), 0.3)
        assert two.budget.reset_in() == pytest.approx(3600, abs=5)

    asyncio.run(main())


def test_requests_in_flight_on_any_worker_count_against_what_the_server_says_is_left(redis_url: str) -> None:
    async def main() -> None:
        one, two = shared_limiter(redis_url, 1000, 1), shared_limiter(redis_url, 1000, 1)
        reset = str(int(time.time()) + 3600)
        await one.acquire()
        one.observe({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": reset})
        sent(one)
        for _ in range(3):
            await two.acquire()  # three requests in flight on the other worker
        # An answer says 3 are left, but it does not count two of those three yet: 3 - 2 = 1 may go.
        two.observe({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": reset})
        sent(two)
        await asyncio.wait_for(one.acquire(), 1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(one.acquire(), 0.3)

    asyncio.run(main())


def test_a_pause_after_a_429_holds_every_worker_and_a_rolled_window_frees_them(redis_url: str) -> None:
    async def main() -> None:
        one, two = (shared_limiter(redis_url, 1000, 1, reset_format="delta_seconds") for _ in range(2))
        # Each start is read before the pause or window begins, so a stall can only lengthen what is measured.
        started = time.monotonic()
        one.pause_for(0.5)
        await two.acquire()
        assert time.monotonic() - started >= 0.49
        # A window that ends soon: once it has, the bucket governs again (and it does end: wait_for's bound).
        started = time.monotonic()
        two.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"})  # delta reading: 1 s
        sent(two)
        await asyncio.wait_for(one.acquire(), 30)
        assert time.monotonic() - started >= 0.9

    asyncio.run(main())


def test_budgets_of_different_connections_are_separate(redis_url: str) -> None:
    async def main() -> None:
        a, b = shared_limiter(redis_url, 1, 3600, "a/preset"), shared_limiter(redis_url, 1, 3600, "b/preset")
        await a.acquire()
        await asyncio.wait_for(b.acquire(), 1)

    asyncio.run(main())


# -- the queue ---------------------------------------------------------------------------------


def test_the_stream_queue_hands_each_entry_to_one_worker_and_publishes_each_outcome_once(redis_url: str) -> None:
    async def main() -> None:
        backend = state(redis_url)
        q1, q2 = backend.queue(PRESET), backend.queue(PRESET)
        await q1.append([json.dumps({"n": i}) for i in range(6)])
        assert await q1.backlog() == 6
        first = await q1.read("w1", 4, 0.1)
        second = await q2.read("w2", 4, 0.1)
        assert [json.loads(e.body)["n"] for e in first + second] == list(range(6))
        assert await q2.read("w2", 4, 0.1) == []
        await q1.ack([(e.id, {"outcome": "delivered", "n": json.loads(e.body)["n"]}) for e in first])
        assert await q1.backlog() == 2
        # w2 dies with its two entries: after the visibility timeout another worker claims them.
        assert await q1.claim("w1", 60, 10) == []
        await asyncio.sleep(0.25)
        await q2.touch("w2", [second[0].id])  # w2 is still working on its first one
        claimed = await q1.claim("w1", 0.2, 10)
        assert [e.id for e in claimed] == [second[1].id]
        await q1.ack([(claimed[0].id, {"outcome": "dropped"}), (second[0].id, {"outcome": "failed"})])
        assert await q1.backlog() == 0
        outcomes = await backend.async_client().xrange(backend.keys.outcomes(PRESET))
        assert len(outcomes) == 6
        await q1.close()
        await q2.close()

    asyncio.run(main())


def test_the_events_of_a_request_are_queued_in_one_round_trip_in_order(redis_url: str) -> None:
    async def main() -> None:
        backend = state(redis_url)
        queue = backend.queue(PRESET)
        client = redis.Redis.from_url(redis_url)
        await queue.append([json.dumps({"n": -1})])  # the script is loaded: what follows is the steady state
        client.config_resetstat()
        await queue.append([json.dumps({"n": i}) for i in range(100)])
        calls = {
            name: stats["calls"]
            for name, stats in client.info("commandstats").items()
            if not name.startswith("cmdstat_config")
        }
        # One command from the intake's side; the XADDs run inside the script, in Redis.
        assert calls == {"cmdstat_evalsha": 1, "cmdstat_xadd": 100}
        entries = await queue.read("w", 200, 0.1)
        assert [json.loads(e.body)["n"] for e in entries] == [-1, *range(100)]
        client.close()
        await queue.close()

    asyncio.run(main())


def test_the_intake_checks_the_backlog_and_queues_a_request_in_one_round_trip(redis_url: str) -> None:
    """On a Redis stream the bound is checked inside the append: a refused batch is not half-queued."""

    async def main() -> None:
        backend = state(redis_url)
        queue = backend.queue(PRESET)
        intake = Intake(queue, IntakeConfig(write_keys=frozenset({"wk-1"}), max_backlog=5), Metrics())
        server = TestServer(create_app(intake))
        await server.start_server(**RUNNER_OPTIONS)
        auth = {"Authorization": "Basic " + base64.b64encode(b"wk-1:").decode()}
        batch = json.dumps({"batch": [{"type": "track", "event": "Demo Requested", "userId": "u1"}] * 3})
        client = redis.Redis.from_url(redis_url)
        try:
            async with aiohttp.ClientSession() as session:
                url = str(server.make_url("/v1/batch"))
                async with session.post(url, data=batch, headers=auth) as answer:
                    assert answer.status == 200
                client.config_resetstat()
                async with session.post(url, data=batch, headers=auth) as answer:
                    assert answer.status == 429 and int(answer.headers["Retry-After"]) >= 1
                    assert (await answer.json())["code"] == "backlog_full"
                    assert "3 events are waiting" in (await answer.json())["message"]
                stats = client.info("commandstats")
                # The refusal came from the script (its XLEN runs inside it), not from an XLEN before it.
                assert stats["cmdstat_evalsha"]["calls"] == 1 and stats["cmdstat_xlen"]["calls"] == 1
                assert await queue.backlog() == 3  # nothing of the refused batch
                async with session.post(url, data=json.dumps({"batch": []}), headers=auth) as answer:
                    assert answer.status == 200  # three and none is within the bound
        finally:
            client.close()
            await server.close()
            await queue.close()

    asyncio.run(main())


def test_the_outcome_stream_is_capped(redis_url: str) -> None:
    async def main() -> None:
        backend = state(redis_url)
        queue = backend.queue(PRESET)
        queue.outcomes_maxlen = 100
        for _ in range(10):
            await queue.append([json.dumps({"n": i}) for i in range(100)])
            entries = await queue.read("w", 100, 0.1)
            await queue.ack([(e.id, {"outcome": "dropped"}) for e in entries])
        length = await backend.async_client().xlen(backend.keys.outcomes(PRESET))
        assert 100 <= length < 300  # MAXLEN ~: about the cap, never the thousand published
        await queue.close()

    asyncio.run(main())


def test_an_unreachable_redis_is_one_line_without_the_password() -> None:
    backend = RedisState("redis://:hunter2-password@127.0.0.1:1/0")
    with pytest.raises(OSError) as caught:
        backend.check()
    assert "hunter2" not in str(caught.value) and "cannot connect" in str(caught.value)
    with pytest.raises(OSError):
        backend.journal(PRESET, 60).record("m:1")
    assert isinstance(redis.Redis, type)


# -- event locks ------------------------------------------------------------------


def test_an_event_lock_is_taken_once_kept_by_its_owner_and_expires(redis_url: str) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            redis_state = state(redis_url)
            one = redis_state.locks(client, "worker-1", 30)
            two = redis_state.locks(client, "worker-2", 30)
            assert await one.acquire(["lock:a"]) == [True]
            # Held by another: refused; free: taken; in the order asked.
            assert await two.acquire(["lock:a", "lock:b", "lock:c"]) == [False, True, True]
            # Asking again for what one already holds answers True (a retry of the same batch).
            assert await one.acquire(["lock:b", "lock:a"]) == [False, True]
            assert await client.get("lock:a") == b"worker-1"
            assert 0 < await client.pttl("lock:b") <= 30_000  # a lock dies with its holder
            await two.release(["lock:b", "lock:c"])
            assert await one.acquire(["lock:b"]) == [True]
            assert await one.acquire([]) == []
        finally:
            await client.aclose()

    asyncio.run(main())
