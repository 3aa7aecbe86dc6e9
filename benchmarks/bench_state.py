"""What the durable state costs per event, and how it scales with the number of people remembered.

Measured in one run, against the in-memory stores as the baseline:

(a) an identity lookup (``IdentityMemory.recall``, what every lead event
    does) with 1,000 / 100,000 / 1,000,000 users remembered: the SQLite
    store's cost must stay flat as the table grows;
(b) an identify written through (``IdentityMemory.remember``: one
    transaction per identify, so a killed process loses nothing);
(c) the delivery journal: a lookup (every prepared event) and a record
    (every delivered event).

Timings are not asserted anywhere; the machine is shared and noisy, so
compare the ratios within one run.

    .venv/bin/python benchmarks/bench_state.py [--lookups N] [--writes N] [--repeat K] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.pipeline.identity import IdentityMemory
from engine.state.identity import IdentityLimits, MemoryIdentityStore, Slot
from engine.state.journal import MemoryJournal
from engine.state.sqlite import SqliteState

PRESET = "outreach/lead-capture"
SIZES = (1_000, 100_000, 1_000_000)


def per_op_us(fn: Callable[[int], None], count: int, repeat: int) -> float:
    """Median over ``repeat`` passes of the CPU time per call, in µs."""
    samples = []
    for _ in range(repeat):
        start = time.process_time_ns()
        for i in range(count):
            fn(i)
        samples.append((time.process_time_ns() - start) / count / 1000)
    return statistics.median(samples)


def fill_sqlite(state: SqliteState, users: int) -> None:
    """Bulk insert in SQL: a million identify calls would take minutes."""
    store = state.identity(PRESET, IdentityLimits())
    with state.db.write() as cur:
        cur.execute(
            """
            WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?3 - 1),
                 rows(id, traits) AS (SELECT printf('user-%07d', i),
                                             json_object('email', printf('user%d@bench.test', i), 'firstName', 'Jane',
                                                         'company', 'Acme Inc', 'title', 'Head of Growth')
                                      FROM n)
            INSERT INTO identity (ns, kind, ident, owner, traits, bytes, seen_at)
            SELECT ?1, 'userId', id, id, traits, length('userId') + 2 * length(id) + length(traits), ?2 FROM rows
        """,
            (store.ns, time.time(), users),
        )
        cur.execute(
            "UPDATE identity_usage SET bytes = (SELECT SUM(bytes) FROM identity WHERE ns = ?1), "
            "entries = (SELECT COUNT(*) FROM identity WHERE ns = ?1) WHERE ns = ?1",
            (store.ns,),
        )


def fill_memory(users: int) -> MemoryIdentityStore:
    store = MemoryIdentityStore()
    for i in range(users):
        ident = f"user-{i:07d}"
        store.merge(
            [Slot("userId", ident)],
            {"email": f"user{i}@bench.test", "firstName": "Jane", "company": "Acme Inc", "title": "Head of Growth"},
            ident,
        )
    return store


def lookups(memory: IdentityMemory, users: int, count: int, seed: int) -> Callable[[int], None]:
    rng = random.Random(seed)
    events = [{"userId": f"user-{rng.randrange(users):07d}"} for _ in range(count)]

    def one(i: int) -> None:
        if not memory.recall(events[i]):
            raise AssertionError("a remembered user was not found")

    return one


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--writes", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}

    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp:
        rows = []
        for users in SIZES:
            state = SqliteState(Path(tmp) / f"users-{users}")
            fill_sqlite(state, users)
            on_disk = IdentityMemory(store=state.identity(PRESET, IdentityLimits()))
            in_memory = IdentityMemory(store=fill_memory(users)) if users <= 100_000 else None
            sqlite_us = per_op_us(lookups(on_disk, users, args.lookups, users), args.lookups, args.repeat)
            memory_us = (
                per_op_us(lookups(in_memory, users, args.lookups, users), args.lookups, args.repeat)
                if in_memory
                else None
            )
            rows.append((users, sqlite_us, memory_us))
            state.close()
        results["lookup_us"] = {str(u): {"sqlite": s, "memory": m} for u, s, m in rows}

        state = SqliteState(Path(tmp) / "writes")
        on_disk = IdentityMemory(store=state.identity(PRESET, IdentityLimits()))
        in_memory = IdentityMemory(store=MemoryIdentityStore())
        traits = {"email": "jane@acme.com", "firstName": "Jane", "company": "Acme Inc"}

        def write(memory: IdentityMemory) -> Callable[[int], None]:
            return lambda i: memory.remember({"userId": f"w-{i}", "anonymousId": f"a-{i}"}, traits)

        results["identify_us"] = {
            "sqlite": per_op_us(write(on_disk), args.writes, args.repeat),
            "memory": per_op_us(write(in_memory), args.writes, args.repeat),
        }

        journal = state.journal(PRESET, 86400)
        baseline = MemoryJournal(86400)
        results["journal_record_us"] = {
            "sqlite": per_op_us(lambda i: journal.record(f"m:{i}"), args.writes, args.repeat),
            "memory": per_op_us(lambda i: baseline.record(f"m:{i}"), args.writes, args.repeat),
        }
        results["journal_lookup_us"] = {
            "sqlite": per_op_us(lambda i: journal.delivered_at(f"m:{i}"), args.lookups, args.repeat),
            "memory": per_op_us(lambda i: baseline.delivered_at(f"m:{i}"), args.lookups, args.repeat),
        }
        state.close()

    print(
        f"CPU µs per operation, median of {args.repeat} passes (Python {results['python']}, "
        f"SQLite {results['sqlite']})\n"
    )
    print("| identity lookup | SQLite store | in-memory store | SQLite / 1,000 users |")
    print("|---|---:|---:|---:|")
    first = rows[0][1]
    for users, sqlite_us, memory_us in rows:
        shown = f"{memory_us:.2f}" if memory_us is not None else "(not built)"
        print(f"| {users:,} users | {sqlite_us:.2f} | {shown} | {sqlite_us / first:.2f}x |")
    print()
    print("| write | SQLite store | in-memory store | ratio |")
    print("|---|---:|---:|---:|")
    for name, label in (
        ("identify_us", "identify (userId + anonymousId)"),
        ("journal_record_us", "journal record"),
        ("journal_lookup_us", "journal lookup"),
    ):
        s, m = results[name]["sqlite"], results[name]["memory"]
        print(f"| {label} | {s:.2f} | {m:.2f} | {s / m:.1f}x |")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
