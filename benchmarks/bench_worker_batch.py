"""A worker's per-batch Redis reads, CPU of the client per event: one script against a pipeline per key.

A worker takes the locks of a batch's events and reads ahead the identity
they will be joined with, once per batch of 64. Each was a pipeline of one
or two commands per event (``SET NX`` and ``GET`` per lock, ``HMGET`` per
identity), which redis-py packs and parses in Python; each is now one
``EVALSHA`` with the batch's keys (:class:`engine.state.redis.RedisKeyLocks`,
:meth:`engine.state.redis.RedisIdentityStore.prefetch`). This measures, in
this process and against a private redis-server, the client's CPU per event
of both ways, alternately, so that the machine's load falls on both alike.

    .venv/bin/python benchmarks/bench_worker_batch.py [--batches N] [--repeat K]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_intake import REPO, redis_server

sys.path.insert(0, str(REPO))
from engine.state.identity import IdentityLimits
from engine.state.redis import RedisState

BATCH = 64
OWNER = "bench-worker"
FIELDS = ("traits", "owner", "bytes", "seen")


async def locks_by_pipeline(client: redis.asyncio.Redis, keys: list[str]) -> list[bool]:
    """The way before: a ``SET NX`` and a ``GET`` per lock, in one pipeline."""
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.set(key, OWNER, nx=True, px=30_000)
            pipe.get(key)
        answers = await pipe.execute()
    return [bool(answers[i]) or answers[i + 1] == OWNER.encode() for i in range(0, len(answers), 2)]


async def cpu_per_event(work: Callable[[int], Awaitable[object]], batches: int) -> float:
    started = time.process_time()
    for n in range(batches):
        await work(n)
    return (time.process_time() - started) / (batches * BATCH) * 1e6


async def measure(url: str, batches: int, repeat: int) -> None:
    state = RedisState(url)
    client = redis.asyncio.Redis.from_url(url)
    locks = state.locks(client, OWNER, 30)
    identity = state.identity("bench/preset", IdentityLimits())
    sync = redis.Redis.from_url(url)
    names = [f"person-{i}" for i in range(BATCH)]
    slots = [("userId", name) for name in names]
    for _, name in slots:
        sync.hset(identity._key("userId", name), mapping={"traits": "{}", "owner": name, "bytes": 40, "seen": 1})

    def by_pipeline(_: int) -> Awaitable[object]:
        with sync.pipeline(transaction=False) as pipe:
            for kind, ident in slots:
                pipe.hmget(identity._key(kind, ident), *FIELDS)
            return asyncio.sleep(0, pipe.execute())

    def by_script(_: int) -> Awaitable[object]:
        identity.prefetch(slots)
        return asyncio.sleep(0)

    ways: dict[str, Callable[[int], Awaitable[object]]] = {
        "locks, a pipeline of SET NX + GET per lock": lambda n: locks_by_pipeline(
            client, [f"p{n}:{i}" for i in range(BATCH)]
        ),
        "locks, one script (RedisKeyLocks.acquire)": lambda n: locks.acquire([f"s{n}:{i}" for i in range(BATCH)]),
        "identity read-ahead, a pipeline of HMGET": by_pipeline,
        "identity read-ahead, one script (prefetch)": by_script,
    }
    costs: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeat):
        await client.flushdb()
        for _, name in slots:
            sync.hset(identity._key("userId", name), mapping={"traits": "{}", "owner": name, "bytes": 40, "seen": 1})
        for name, way in ways.items():
            costs[name].append(await cpu_per_event(way, batches))
    await client.aclose()
    print(f"The client's CPU per event, batches of {BATCH}, {batches} batches, {repeat} runs:")
    for name, values in costs.items():
        print(f"  {name}: {statistics.median(values):.1f} µs (spread {min(values):.1f}-{max(values):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server, url = redis_server(Path(tmp))
        try:
            asyncio.run(measure(url, args.batches, args.repeat))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
