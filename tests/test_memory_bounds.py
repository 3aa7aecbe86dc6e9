"""Process memory that must not grow with the work.

Three places used to: a dry run's identity memory (1.5 GB of RSS for a
million identify calls, while its 512 MiB cap counted only data bytes),
``dlq list`` and ``dlq replay`` (every letter loaded at once: 480 MB at
30,000 letters), and a delivering run while its destination was down (about
5 KB more per event). Each test here measures at a scale where the old
growth is plain, in a fresh process where that matters, so the test
runner's own allocations do not count. The full-size figures are
``benchmarks/bench_memory.py``'s.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from typing import Any

import pytest

from engine import outcome as oc
from engine.language.compiler import load_preset
from engine.language.settings import resolve
from engine.pipeline.identity import IdentityMemory
from engine.pipeline.prepare import Pipeline
from engine.state.identity import DEFAULT_MEMORY_BYTES, IdentityLimits, MemoryIdentityStore, Slot

PRESET = "outreach/lead-capture"
MIB = 1024 * 1024
UNBOUNDED = 10**12


def fresh_process(script: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; it prints one JSON object as its last line."""
    prelude = textwrap.dedent("""
        import json, sys

        def rss_mib():
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
            raise SystemExit("no /proc/self/status")
    """)
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script), *args], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def identify(i: int) -> dict[str, Any]:
    return {"type": "identify", "userId": f"user-{i:08d}", "anonymousId": f"anon-{i:08d}-4f1c-9a7e",
            "messageId": f"m-{i}", "traits": {"email": f"person{i}@example.com", "firstName": "Jane",
                                              "company": "Acme Inc", "title": "Head of Growth"}}


# --------------------------------------------------------------------------
# a dry run's identity memory
# --------------------------------------------------------------------------


def _fill(store: MemoryIdentityStore, start: int, stop: int) -> None:
    for i in range(start, stop):
        store.merge([Slot("userId", f"user-{i:08d}"), Slot("anonymousId", f"anon-{i:08d}-4f1c-9a7e", True)],
                    {"email": f"person{i}@example.com", "firstName": "Jane", "company": "Acme Inc"}, f"user-{i:08d}")


@pytest.mark.parametrize("memory_bytes", [UNBOUNDED, 4 * MIB], ids=["growing", "evicting"])
def test_the_in_memory_identity_store_counts_at_least_the_memory_it_really_holds(memory_bytes: int) -> None:
    """``process_bytes`` is what the entries hold in this process (tracemalloc's count), never less."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = MemoryIdentityStore(IdentityLimits(max_bytes=UNBOUNDED, memory_bytes=memory_bytes))
        worst = 0.0
        for step in range(1, 21):
            _fill(store, (step - 1) * 2_000, step * 2_000)
            held = tracemalloc.get_traced_memory()[0] - base
            worst = max(worst, held / store.process_bytes)
    finally:
        tracemalloc.stop()
    assert store.process_bytes <= memory_bytes
    assert worst <= 1.0, f"the store held {worst:.2f}x what it counted"
    assert worst > 0.5, f"the count is {1 / worst:.1f}x what the store holds: too coarse to be a bound"


def test_past_its_process_bound_the_least_recently_seen_identities_are_forgotten_first() -> None:
    store = MemoryIdentityStore(IdentityLimits(max_bytes=UNBOUNDED, memory_bytes=1 * MIB))
    for start in range(0, 5_000, 100):
        _fill(store, start, start + 100)
        assert store.recall("userId", "user-00000000") is not None  # seen again and again: the most recent
    assert store.process_bytes <= 1 * MIB
    assert store.bytes_used < store.process_bytes  # data bytes are the smaller figure
    assert store.recall("userId", "user-00000001") is None  # forgotten first
    assert store.recall("anonymousId", "anon-00000000-4f1c-9a7e") is None  # not looked up: forgotten too
    assert store.recall("userId", "user-00004999") is not None
    assert store.recall("anonymousId", "anon-00004999-4f1c-9a7e").traits == {  # type: ignore[union-attr]
        "email": "person4999@example.com", "firstName": "Jane", "company": "Acme Inc"}


def test_a_later_event_of_a_forgotten_user_is_not_identified() -> None:
    preset = load_preset(PRESET)
    settings = resolve(preset.settings, {}, require=False)
    store = MemoryIdentityStore(IdentityLimits(memory_bytes=1 * MIB))
    pipeline = Pipeline(preset, settings, IdentityMemory.for_preset(preset.identity, store))
    for i in range(5_000):
        pipeline.dry_run(identify(i), i)
    consent = {"canonical": {"marketing": True}}
    for i, expected in ((0, oc.DROPPED), (4_999, oc.WOULD_SEND)):
        result = pipeline.dry_run({"type": "track", "event": "Lead Submitted", "userId": f"user-{i:08d}",
                                   "context": {"consent": consent}}, 5_000 + i)
        assert result.outcome == expected, result.to_dict()
        if expected == oc.DROPPED:
            assert result.reason == oc.NOT_IDENTIFIED


def test_a_pipeline_without_a_state_store_has_the_default_process_bound() -> None:
    preset = load_preset(PRESET)
    pipeline = Pipeline(preset, resolve(preset.settings, {}, require=False))
    assert isinstance(pipeline.memory.store, MemoryIdentityStore)
    assert pipeline.memory.store.limits.memory_bytes == DEFAULT_MEMORY_BYTES == 128 * MIB


def test_a_dry_runs_identity_memory_stops_growing_at_its_bound() -> None:
    """The pipeline a dry run uses, in a fresh process: memory flat once the bound is reached."""
    result = fresh_process("""
        from engine.language.compiler import load_preset
        from engine.language.settings import resolve
        from engine.pipeline.identity import IdentityMemory
        from engine.pipeline.prepare import Pipeline
        from engine.state.identity import IdentityLimits, MemoryIdentityStore

        preset = load_preset("outreach/lead-capture")
        store = MemoryIdentityStore(IdentityLimits(memory_bytes=16 * 1024 * 1024))
        pipeline = Pipeline(preset, resolve(preset.settings, {}, require=False),
                            IdentityMemory.for_preset(preset.identity, store))
        def identify(i):
            return {"type": "identify", "userId": f"user-{i:08d}", "anonymousId": f"anon-{i:08d}-4f1c-9a7e",
                    "traits": {"email": f"person{i}@example.com", "firstName": "Jane", "company": "Acme Inc",
                               "title": "Head of Growth"}}
        start = rss_mib()
        marks = {}
        for i in range(120_000):
            pipeline.dry_run(identify(i), i)
            if i + 1 in (40_000, 120_000):
                marks[i + 1] = rss_mib()
        print(json.dumps({"start": start, "marks": marks, "process_bytes": store.process_bytes}))
    """)
    marks = {int(k): v for k, v in result["marks"].items()}
    # 40,000 identify calls are 80,000 ids, past the 16 MiB bound; 80,000 more must not add their ~110 MiB.
    assert result["process_bytes"] <= 16 * MIB
    assert marks[120_000] - marks[40_000] < 6, result
    assert marks[120_000] - result["start"] < 16 * 1.5 + 8, result


@pytest.mark.skipif(not os.environ.get("SIGNAL_ENGINE_SLOW_TESTS"),
                    reason="about a minute: set SIGNAL_ENGINE_SLOW_TESTS=1 (benchmarks/bench_memory.py measures it too)")
def test_a_million_identify_dry_run_stays_under_300_mb(tmp_path: Any) -> None:
    events = tmp_path / "identify.ndjson"
    with events.open("w", encoding="utf-8") as out:
        for i in range(1_000_000):
            out.write(json.dumps(identify(i)) + "\n")
    result = fresh_process("""
        import resource, subprocess
        done = subprocess.run([sys.executable, "-m", "engine.cli", "run", "outreach/lead-capture", "--dry-run",
                               "--events", sys.argv[1]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps({"code": done.returncode, "peak_mib": peak}))
    """, str(events), timeout=600)
    assert result["code"] == 0
    assert result["peak_mib"] * MIB < 300e6, result
