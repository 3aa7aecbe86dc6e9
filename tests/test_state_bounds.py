"""No memory or disk figure of the state grows without a declared bound.

The identity memory used to hold 10,000 ids (a normal site has more) and to
load its whole file into memory on start (500 identifies with a 1 MB trait
made a 1 GB file and 2 GB of RSS). These tests hold it to its declared
bounds: a million users are all remembered and looked up with one index
search each, in a process whose memory does not grow with them; huge traits
are not kept; the total size stays within ``max_bytes``. Memory is measured
in a fresh process, so the test runner's own allocations do not count.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.state.identity import IdentityLimits
from engine.state.sqlite import SqliteState
from engine.state.sqlite.database import WAL_LIMIT_BYTES

PRESET = "outreach/lead-capture"
MIB = 1024 * 1024


def measured(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; it prints one JSON object as its last line."""
    prelude = textwrap.dedent("""
        import json, resource, sys

        def rss_mib():
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        def peak_mib():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    """)
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def disk_bytes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir() if p.name.startswith("state.db")}


@pytest.fixture
def roomy_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory when the machine has one: the million-row file is 150 MB of scratch."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="state-bounds-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_million_identified_users_are_all_remembered_with_one_index_search_each(roomy_dir: Path) -> None:
    tmp_path = roomy_dir
    users = 1_000_000
    state = SqliteState(tmp_path)
    store = state.identity(PRESET, IdentityLimits())  # the shipped preset's bounds
    # Bulk insert in SQL (a million identify calls would take minutes); bytes as the preset language counts them.
    with state.db.write() as cur:
        cur.execute(
            """
            WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?3 - 1),
                 rows(id, traits) AS (SELECT printf('user-%07d', i), json_object('email', printf('user%d@big.test', i))
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
    used, entries = store.usage()
    assert entries == users  # far past the old 10,000-id limit, nothing was forgotten
    assert used <= IdentityLimits().max_bytes
    # A lookup is one statement, a search of the primary key whatever the number of rows: O(1) per event in practice.
    statements: list[str] = []
    state.db.conn.set_trace_callback(statements.append)
    assert store.recall("userId", "user-0000001") is not None
    state.db.conn.set_trace_callback(None)
    assert len(statements) == 1, statements
    plan = " ".join(row[-1] for row in state.db.read("EXPLAIN QUERY PLAN " + statements[0]))
    assert plan.startswith("SEARCH identity USING") and "(ns=? AND kind=? AND ident=?)" in plan, plan
    assert "SCAN" not in plan
    state.close()
    files = disk_bytes(tmp_path)
    assert files["state.db"] < 6 * used  # the rows, two indexes and page slack
    assert files.get("state.db-wal", 0) <= WAL_LIMIT_BYTES + 4 * MIB

    # A fresh process (a restart) looks 20,000 random users up: all found, memory flat.
    result = measured(
        """
        import random
        from engine.pipeline.identity import IdentityMemory
        from engine.state.identity import IdentityLimits
        from engine.state.sqlite import SqliteState
        before = rss_mib()
        store = SqliteState(sys.argv[1]).identity("outreach/lead-capture", IdentityLimits())
        memory = IdentityMemory(store=store)
        rng = random.Random(1)
        found = 0
        for _ in range(20_000):
            i = rng.randrange(1_000_000)
            if memory.recall({"userId": f"user-{i:07d}"}) == {"email": f"user{i}@big.test"}:
                found += 1
        print(json.dumps({"found": found, "grew_mib": rss_mib() - before, "peak_mib": peak_mib()}))
    """,
        str(tmp_path),
    )
    assert result["found"] == 20_000, result
    # The page cache (8 MiB) and allocator slack (about 20 MiB measured); loading the rows would take hundreds.
    assert result["grew_mib"] < 64, result


def test_huge_traits_are_not_remembered_so_disk_and_memory_stay_small(tmp_path: Path) -> None:
    result = measured(
        """
        import os
        from engine.compile.compiler import load_preset
        from engine.language.settings import resolve
        from engine.pipeline.identity import IdentityMemory
        from engine.pipeline.prepare import Pipeline
        from engine.state.identity import IdentityLimits
        from engine.state.sqlite import SqliteState
        preset = load_preset("outreach/lead-capture")
        settings = resolve(preset.settings, {}, require=False)
        state = SqliteState(sys.argv[1])
        before = rss_mib()
        memory = IdentityMemory.for_preset(preset.identity, state.identity(preset.name, IdentityLimits.of(preset.identity)))
        pipeline = Pipeline(preset, settings, memory)
        huge = "x" * (1024 * 1024)  # a declared trait, a megabyte long
        for i in range(500):
            pipeline.prepare({"type": "identify", "userId": f"u{i}", "anonymousId": f"a{i}",
                              "traits": {"email": f"u{i}@huge.test", "title": huge}})
        state.close()
        written = sum(os.path.getsize(os.path.join(sys.argv[1], f)) for f in os.listdir(sys.argv[1]))
        # Restart: open the state again and use it.
        state = SqliteState(sys.argv[1])
        memory = IdentityMemory.for_preset(preset.identity, state.identity(preset.name, IdentityLimits.of(preset.identity)))
        recalled = [memory.recall({"userId": f"u{i}"}) for i in range(500)]
        ok = all(r == {"email": f"u{i}@huge.test"} for i, r in enumerate(recalled))
        print(json.dumps({"disk": written, "ok": ok, "grew_mib": rss_mib() - before}))
    """,
        str(tmp_path),
    )
    assert result["ok"]  # the email is remembered; the megabyte title is not
    assert result["disk"] < 2 * MIB  # not 1 GB
    assert result["grew_mib"] < 64, result  # about 20 MiB measured; not 2 GB


def test_the_identity_memory_stays_within_max_bytes_on_disk(tmp_path: Path) -> None:
    from engine.pipeline.identity import IdentityMemory

    max_bytes = 128 * 1024
    state = SqliteState(tmp_path)
    store = state.identity(PRESET, IdentityLimits(max_bytes=max_bytes))
    memory = IdentityMemory(store=store)
    for i in range(5_000):  # about 800 kB of identities through a 128 KiB memory
        memory.remember(
            {"userId": f"user-{i}", "anonymousId": f"anon-{i}"},
            {"email": f"user{i}@bounded.test", "company": "Bounded Inc"},
        )
    used, entries = store.usage()
    assert max_bytes - 200 < used <= max_bytes
    assert memory.recall({"userId": "user-4999"}) == {"email": "user4999@bounded.test", "company": "Bounded Inc"}
    assert memory.recall({"userId": "user-0"}) == {}  # the least recently seen went first
    state.close()
    files = disk_bytes(tmp_path)
    assert files["state.db"] < 8 * max_bytes
    assert files.get("state.db-wal", 0) <= WAL_LIMIT_BYTES + 4 * MIB
    assert os.path.getsize(tmp_path / "state.db") > 0
