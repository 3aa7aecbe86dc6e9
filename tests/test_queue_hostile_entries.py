"""Queue entries the intake never wrote, and entries that kill their worker, on both queue kinds.

Any writer with access to the stream can ``XADD`` anything: bytes that are
not UTF-8, a lone surrogate, JSON nested thousands deep. Each such entry
must end as one outcome and be acknowledged, and its neighbours in the same
read must go on. An entry that makes its worker stop every time it is worked
on must not be claimed forever: after ``max_deliveries`` it is a dead letter
(cause ``poison``) carrying the error, and is acknowledged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.delivery.transport import HttpRequest, HttpResponse
from engine.runtime import Engine
from engine.service.worker import Worker
from engine.state.redis import RedisState
from engine.state.sqlite.queue import SqliteQueue
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from service_helpers import identify, lead, page
from test_delivery_sandbox import unique_credentials

PRESET = "outreach/lead-capture"
SETTINGS = {**unique_credentials(), "base_url": "http://127.0.0.1:9"}  # pages and identifies send nothing


def _engine(tmp_path: Path, **options: Any) -> Engine:
    return Engine.from_preset(PRESET, SETTINGS, state=tmp_path / "state", **options)


async def _work_until(worker: Worker, done: Callable[[], Any], timeout: float = 15) -> None:
    stop = asyncio.Event()
    task = asyncio.ensure_future(worker.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await done():
            assert not task.done(), f"the worker stopped: {task.exception()!r}"
            assert asyncio.get_running_loop().time() < deadline, "timed out: entries left unacknowledged"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _raw_entries(url: str, stream: str, bodies: list[bytes | None]) -> None:
    """XADD as another writer would: raw bytes, no intake in between."""
    client = redis.Redis.from_url(url)
    try:
        for body in bodies:
            client.xadd(stream, {"event": body, "at": b"1700000000.0"} if body is not None else {"other": b"x"})
    finally:
        client.close()


# -- one bad entry in a batch ------------------------------------------------------------------


def test_a_stream_entry_that_is_not_utf8_is_an_invalid_event_and_the_rest_of_its_batch_goes_on(
    tmp_path: Path, redis_url: str
) -> None:
    good = [json.dumps(page(i, "utf")).encode() for i in range(40)]
    bad = [
        b'{"type": "page", "messageId": "bad-\xff\xfe", "anonymousId": "x"}',
        None,
        b'{"type": "page", "messageId": "m-\xc3"}',
    ]
    bodies = good[:20] + bad + good[20:]

    async def main() -> tuple[list[dict[str, Any]], int]:
        backend = RedisState(redis_url)
        stream, outcomes = backend.keys.events(PRESET), backend.keys.outcomes(PRESET)
        _raw_entries(redis_url, stream, bodies)
        queue = backend.queue(PRESET)
        async with _engine(tmp_path) as engine:
            worker = Worker(engine, queue, "w1", read_block_seconds=0.05, batch=64)

            async def done() -> bool:
                return await queue.backlog() == 0

            await _work_until(worker, done)
        published = await queue.r.xrange(outcomes)
        pending = await queue.pending()
        await queue.close()
        backend.close()
        return [json.loads(fields[b"outcome"]) for _, fields in published], pending

    published, pending = asyncio.run(main())
    assert pending == 0 and len(published) == len(bodies)  # every entry acknowledged with one outcome
    invalid = [o for o in published if o.get("reason") == "invalid_event"]
    first_bad = [bad[0].index(b"\xff"), bad[2].index(b"\xc3")]  # where a UTF-8 decoder stops
    assert [o["detail"] for o in invalid] == [
        f"the queued entry is not UTF-8 text (byte {first_bad[0]} of its 'event' field)",
        "the queued entry has no 'event' field",
        f"the queued entry is not UTF-8 text (byte {first_bad[1]} of its 'event' field)",
    ]
    assert sorted(o["messageId"] for o in published if o.get("messageId")) == sorted(f"utf-page-{i}" for i in range(40))


def test_a_lone_surrogate_in_a_stream_entry_is_escaped_and_the_entry_acknowledged(
    tmp_path: Path, redis_url: str
) -> None:
    bodies = [
        b'{"type": "page", "messageId": "m-\\ud800", "anonymousId": "a1"}',  # a JSON escape
        b'{"type": "page", "messageId": "m-\xed\xa0\x81", "anonymousId": "a2"}',  # encoded as UTF-8 would
        json.dumps(page(1, "sur")).encode(),
    ]

    async def main() -> tuple[list[dict[str, Any]], int]:
        backend = RedisState(redis_url)
        _raw_entries(redis_url, backend.keys.events(PRESET), bodies)
        queue = backend.queue(PRESET)
        async with _engine(tmp_path) as engine:
            worker = Worker(engine, queue, "w1", read_block_seconds=0.05)

            async def done() -> bool:
                return await queue.backlog() == 0

            await _work_until(worker, done)
        published = await queue.r.xrange(backend.keys.outcomes(PRESET))
        pending = await queue.pending()
        await queue.close()
        backend.close()
        return [json.loads(fields[b"outcome"]) for _, fields in published], pending

    published, pending = asyncio.run(main())
    assert pending == 0
    assert [o["messageId"] for o in published] == ["m-\\ud800", "m-\\ud801", "sur-page-1"]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_an_entry_nested_thousands_deep_is_an_invalid_event_not_a_stopped_worker(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    deep = '{"type": "page", "messageId": "deep", "properties": ' + '{"a": ' * 5000 + "1" + "}" * 5001

    async def main() -> list[dict[str, Any]]:
        printed: list[dict[str, Any]] = []
        if kind == "redis":
            queue: Any = RedisState(request.getfixturevalue("redis_url")).queue(PRESET)
        else:
            queue = SqliteQueue(tmp_path / "queue")
        await queue.append([deep, json.dumps(page(2, "deep"))])
        async with _engine(tmp_path) as engine:
            worker = Worker(engine, queue, "w1", emit=printed.append, read_block_seconds=0.05)

            async def done() -> bool:
                return await queue.backlog() == 0

            await _work_until(worker, done)
        await queue.close()
        return printed

    printed = asyncio.run(main())
    assert [(o["outcome"], o.get("reason")) for o in printed] == [
        ("dropped", "invalid_event"),
        ("dropped", "event_not_mapped"),
    ]
    assert printed[0]["detail"] == "the queued entry is nested more than 64 levels deep"


# -- poison entries ---------------------------------------------------------------------------


class WorkerKilled(BaseException):
    """What a worker process dying in the middle of a delivery looks like from inside it (as an OOM kill)."""


class KillingTransport:
    """Every send stops the worker: the lead below can never be finished, whoever takes it."""

    def __init__(self) -> None:
        self.sends = 0

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.sends += 1
        raise WorkerKilled("the destination client crashed (simulated segfault)")


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_an_entry_that_stops_every_worker_becomes_a_poison_dead_letter_after_max_deliveries(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    neighbours = [identify(1, "poison"), page(1, "poison"), page(2, "poison")]
    poison = lead(1, "poison")
    url = request.getfixturevalue("redis_url") if kind == "redis" else None

    def open_queue() -> Any:
        if url is not None:
            return RedisState(url).queue(PRESET)
        return SqliteQueue(tmp_path / "queue")  # a restart: the previous process's leases are cleared

    async def one_worker_life(life: int, transport: KillingTransport) -> tuple[list[dict[str, Any]], Any]:
        queue = open_queue()
        printed: list[dict[str, Any]] = []
        stop = asyncio.Event()
        async with _engine(tmp_path, transport=transport) as engine:
            worker = Worker(
                engine,
                queue,
                f"w{life}",
                emit=printed.append,
                read_block_seconds=0.05,
                visibility_seconds=0.3,
                max_deliveries=3,
            )
            task = asyncio.ensure_future(worker.run(stop))
            deadline = asyncio.get_running_loop().time() + 10
            while not task.done() and await queue.backlog() > 0:
                assert asyncio.get_running_loop().time() < deadline, "neither stopped nor finished"
                await asyncio.sleep(0.02)
            stop.set()
            outcome = await asyncio.gather(task, return_exceptions=True)
            letters = engine.dead_letters.entries(PRESET)
        await queue.close()
        return printed + [{"life_ended": repr(outcome[0]), "letters": letters}], None

    async def main() -> list[list[dict[str, Any]]]:
        queue = open_queue()
        await queue.append([json.dumps(e) for e in neighbours[:2] + [poison] + neighbours[2:]])
        await queue.close()
        transport = KillingTransport()
        lives = []
        for life in range(1, 6):
            printed, _ = await one_worker_life(life, transport)
            lives.append(printed)
            if "WorkerKilled" not in printed[-1]["life_ended"]:
                break
            await asyncio.sleep(0.35)  # the dead worker's lease expires (Redis: then another claims it)
        return lives

    lives = asyncio.run(main())
    # Three lives end on the crash; the neighbours finish in the first, the poison is never acknowledged by them.
    assert [("WorkerKilled" in life[-1]["life_ended"]) for life in lives] == [True, True, True, False]
    finished = [o["messageId"] for life in lives for o in life[:-1]]
    # Each neighbour finished once (one queued behind the poison lead, in input order, waits for the next life),
    # and none of them is counted with the poison: they are never dead-lettered.
    assert sorted(finished) == ["poison-id-1", "poison-lead-1", "poison-page-1", "poison-page-2"]
    last = [o for o in lives[3][:-1] if o["messageId"] == "poison-lead-1"]
    assert [(o["outcome"], o.get("cause")) for o in last] == [("dead_lettered", "poison")]
    assert last[0]["detail"].startswith(
        "handed to a worker 3 times and never finished (the limit is 3 deliveries): "
        "WorkerKilled: the destination client crashed (simulated segfault)"
    )
    letters = lives[3][-1]["letters"]
    assert [(letter["cause"], letter["messageId"], letter["event"]) for letter in letters] == [
        ("poison", "poison-lead-1", poison)
    ]


# -- a store that cannot take writes -----------------------------------------------------------


def test_the_redis_intake_is_not_ready_while_redis_refuses_writes(redis_url: str) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from engine.service.intake import RUNNER_OPTIONS, Intake, IntakeConfig, create_app
    from engine.service.metrics import Metrics

    async def main() -> list[int]:
        backend = RedisState(redis_url)
        queue = backend.queue(PRESET)
        intake = Intake(queue, IntakeConfig(write_keys=frozenset({"wk-ready-1"})), Metrics())
        client = TestClient(TestServer(create_app(intake), **RUNNER_OPTIONS))
        await client.start_server()
        admin = redis.Redis.from_url(redis_url)
        statuses = []
        try:
            statuses.append((await client.get("/readyz")).status)
            # Full, with eviction off (the documented set-up): Redis refuses every write.
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")
            statuses.append((await client.get("/readyz")).status)
            admin.config_set("maxmemory", "0")
            statuses.append((await client.get("/readyz")).status)
        finally:
            admin.config_set("maxmemory", "0")
            admin.close()
            await client.close()
            await queue.close()
            backend.close()
        return statuses

    assert asyncio.run(main()) == [200, 503, 200]


class GatedTransport:
    """Every request waits until the test opens the gate, then is refused for good (the grant was revoked)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def send(self, request: HttpRequest) -> HttpResponse:
        await self.gate.wait()
        return HttpResponse(400, {"Content-Type": "application/json"}, {"error": "invalid_grant"})


def test_a_suspect_waiting_for_its_turn_keeps_its_lease_so_no_other_worker_claims_it(
    tmp_path: Path, redis_url: str
) -> None:
    async def main() -> tuple[list[str], list[str], list[tuple[str, int]]]:
        backend = RedisState(redis_url)
        queue_a, queue_b, dead = backend.queue(PRESET), backend.queue(PRESET), backend.queue(PRESET)
        await dead.append([json.dumps(page(1, "held"))])
        assert len(await dead.read("dead", 10, 0.1)) == 1  # a worker read it and died: it is pending, idle
        await dead.append([json.dumps(identify(1, "held")), json.dumps(lead(1, "held"))])
        transport = GatedTransport()
        done_a: list[str] = []
        done_b: list[str] = []
        stop = asyncio.Event()
        async with (
            _engine(tmp_path / "a", transport=transport) as engine_a,
            _engine(tmp_path / "b", transport=transport) as engine_b,
        ):
            a = Worker(
                engine_a,
                queue_a,
                "a",
                emit=lambda r: done_a.append(r["messageId"]),
                read_block_seconds=0.05,
                visibility_seconds=0.6,
            )
            task_a = asyncio.ensure_future(a.run(stop))
            await asyncio.sleep(1.0)  # a: the lead waits at the gate; the dead worker's page is claimed, held
            b = Worker(
                engine_b,
                queue_b,
                "b",
                emit=lambda r: done_b.append(r["messageId"]),
                read_block_seconds=0.05,
                visibility_seconds=0.6,
            )
            task_b = asyncio.ensure_future(b.run(stop))
            await asyncio.sleep(1.5)  # over two visibility timeouts: b would claim it, were its lease not renewed
            info = await dead.r.xpending_range(backend.keys.events(PRESET), "workers", min="-", max="+", count=10)
            held = sorted((i["consumer"].decode(), i["times_delivered"]) for i in info)
            transport.gate.set()
            while len(done_a) + len(done_b) < 3:
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.gather(task_a, task_b)
        for q in (queue_a, queue_b, dead):
            await q.close()
        backend.close()
        return done_a, done_b, held

    done_a, done_b, held = asyncio.run(main())
    assert done_b == [] and sorted(done_a) == ["held-id-1", "held-lead-1", "held-page-1"]
    # While the gate was shut: the lead (read once) and the page (read by the dead worker, claimed by a), both a's.
    assert held == [("a", 1), ("a", 2)]


def test_a_suspect_claimed_beside_a_poison_entry_keeps_its_lease_while_the_poison_is_finished(
    tmp_path: Path, redis_url: str
) -> None:
    """A claim hands a worker a suspect (delivered once before) and an entry over the limit together.

    The poison letter is finished first, and its acknowledgement is slow (a
    slow link to Redis: here held open). All that time the suspect must stay
    this worker's, its lease renewed: a second worker claiming it would count
    a delivery that failed nowhere (a healthy event on its way to ``poison``)
    and work on it too (two outcomes for one event).
    """

    async def main() -> tuple[list[tuple[str, str]], dict[str, str], list[Any], list[Any]]:
        backend = RedisState(redis_url)
        stream = backend.keys.events(PRESET)
        queue_a, queue_b, setup = backend.queue(PRESET), backend.queue(PRESET), backend.queue(PRESET)
        await setup.append([json.dumps(lead(1, "over")), json.dumps(page(1, "suspect"))])
        ids = {e.id: json.loads(e.body)["messageId"] for e in await setup.read("dead", 10, 0.1)}
        over, suspect = list(ids)
        # A worker that died holding them: the lead handed out 3 times already, the page once.
        await setup.r.xclaim(stream, "workers", "dead", 0, [over], idle=10**9, retrycount=3, justid=True)
        await setup.r.xclaim(stream, "workers", "dead", 0, [suspect], idle=10**9, retrycount=1, justid=True)
        await setup.append([json.dumps(page(i, "fresh")) for i in (1, 2)])
        acks_open = asyncio.Event()
        real_ack = queue_a.ack

        async def slow_ack(done: Any) -> None:
            await acks_open.wait()
            await real_ack(done)

        queue_a.ack = slow_ack  # type: ignore[method-assign]
        done: list[tuple[str, str]] = []
        stop = asyncio.Event()
        visibility = 0.6
        async with _engine(tmp_path / "a") as engine_a, _engine(tmp_path / "b") as engine_b:
            a = Worker(
                engine_a,
                queue_a,
                "a",
                emit=lambda r: done.append((r["entry"], "a")),
                max_deliveries=3,
                read_block_seconds=0.05,
                visibility_seconds=visibility,
            )
            task_a = asyncio.ensure_future(a.run(stop))
            while ("over-lead-1", "a") not in [(ids.get(e), w) for e, w in done]:  # a claimed both; its ack waits
                await asyncio.sleep(0.02)
            b = Worker(
                engine_b,
                queue_b,
                "b",
                emit=lambda r: done.append((r["entry"], "b")),
                max_deliveries=3,
                read_block_seconds=0.05,
                visibility_seconds=visibility,
            )
            task_b = asyncio.ensure_future(b.run(stop))
            await asyncio.sleep(4 * visibility)  # b claims every half visibility: it would have taken the suspect
            acks_open.set()
            while await setup.backlog() > 0 or await setup.pending() > 0:
                assert not task_a.done() and not task_b.done()
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.gather(task_a, task_b)
            letters_a, letters_b = engine_a.dead_letters.entries(PRESET), engine_b.dead_letters.entries(PRESET)
        for q in (queue_a, queue_b, setup):
            await q.close()
        backend.close()
        return done, ids, letters_a, letters_b

    done, ids, letters_a, letters_b = asyncio.run(main())
    finished = sorted(ids.get(entry, "fresh") for entry, _ in done)
    assert finished == ["fresh", "fresh", "over-lead-1", "suspect-page-1"], done  # one outcome each
    assert [entry for entry, worker in done if ids.get(entry) == "suspect-page-1"] and [
        worker for entry, worker in done if ids.get(entry) == "suspect-page-1"
    ] == ["a"]
    assert [(letter["cause"], letter["messageId"]) for letter in letters_a + letters_b] == [("poison", "over-lead-1")]
