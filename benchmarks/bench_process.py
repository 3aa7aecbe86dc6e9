"""Whole-process CPU of ``signal-engine run --dry-run`` against the hand-written floor, in the same run.

Three figures, each as engine / floor:

- startup: a run over an empty input (interpreter, imports, preset load);
- drop, per event: (CPU over N drop events - CPU over the empty input) / N;
- lead, per event: the same over N lead events.

Each process's CPU (user + system, ``resource.getrusage`` of the reaped
child) is measured K times, engine and floor interleaved so that both see
the same machine noise, and the medians are compared. Before any timing,
the outcome lines of both, parsed, must be equal on every event of both
workloads; the comparison is fair only while that holds.

    .venv/bin/python benchmarks/bench_process.py [--events N] [--repeat K] [--reference] [--json]

The children run with a buffered stdout and with bytecode caching on
(``PYTHONUNBUFFERED`` and ``PYTHONDONTWRITEBYTECODE`` are removed from their
environment), as on a user's machine, and with a preset cache of their own,
warmed by one run; a startup with a cold (empty) preset cache is reported too, and the first
startup after an edit outside the expressions (a comment added to a copy of the preset).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import drop_events, lead_events  # noqa: E402

PRESET = "outreach/lead-capture"
TARGETS = {"startup": 1.5, "cold": 2.5, "drop": 1.0, "lead": 1.5}  # the targets of this round


def engine_command(events: Path) -> list[str]:
    script = Path(sys.executable).with_name("signal-engine")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "engine"]
    return [*head, "run", PRESET, "--events", str(events), "--dry-run"]


def floor_command(events: Path) -> list[str]:
    return [sys.executable, str(HERE / "floor.py"), str(events)]


def child_env(cache: Path, backend: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")}
    env["SIGNAL_ENGINE_CACHE_DIR"] = str(cache)
    env.pop("SIGNAL_ENGINE_JSONATA", None)
    if backend:
        env["SIGNAL_ENGINE_JSONATA"] = backend
    return env


def cpu_of(command: list[str], env: dict[str, str], stdout: Any = subprocess.DEVNULL) -> float:
    """Seconds of CPU (user + system) the child used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, env=env, stdout=stdout, stderr=subprocess.PIPE, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def outcomes(command: list[str], env: dict[str, str]) -> list[Any]:
    proc = subprocess.run(command, env=env, capture_output=True, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def write_events(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, metavar="N", help="events per workload (default 20000)")
    parser.add_argument("--repeat", type=int, default=7, metavar="K", help="runs per measurement; medians (default 7)")
    parser.add_argument(
        "--reference", action="store_true", help="also time the lead path with SIGNAL_ENGINE_JSONATA=reference"
    )
    parser.add_argument("--json", action="store_true", help="also print the medians as one JSON line")
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be at least 1")

    with tempfile.TemporaryDirectory(prefix="signal-bench-") as tmp:
        root = Path(tmp)
        files = {
            "empty": write_events(root / "empty.ndjson", []),
            "drop": write_events(root / "drops.ndjson", drop_events(args.events)),
            "lead": write_events(root / "leads.ndjson", lead_events(args.events)),
        }
        env = child_env(root / "cache")

        # Warm up (bytecode, preset cache) and prove both do the same work.
        for name in ("drop", "lead"):
            engine_out, floor_out = (
                outcomes(engine_command(files[name]), env),
                outcomes(floor_command(files[name]), env),
            )
            assert len(engine_out) == args.events, (name, len(engine_out))
            for mine, theirs in zip(engine_out, floor_out, strict=True):
                assert mine == theirs, (name, mine, theirs)
            assert {o["outcome"] for o in engine_out} == {"drop": {"dropped"}, "lead": {"would_send"}}[name]

        runs: dict[tuple[str, str], list[float]] = {}
        cold: list[float] = []
        # The first run after an edit outside the expressions: a copy of the preset, found by its name
        # first, with a comment added each time (its bytes change, so the preset cache misses; the
        # expressions' facts, kept by their text since the warm-up, still hold).
        from engine.language import resources

        original = resources.find_preset(PRESET).read_text(encoding="utf-8")
        edited = root / "edited" / f"{PRESET}.yaml"
        edited.parent.mkdir(parents=True)
        edit_env = {**env, "SIGNAL_ENGINE_PRESET_PATH": str(root / "edited")}
        edit: list[float] = []
        for repetition in range(args.repeat):
            for name, path in files.items():
                for who, command in (("engine", engine_command(path)), ("floor", floor_command(path))):
                    runs.setdefault((who, name), []).append(cpu_of(command, env))
            cold_cache = Path(tempfile.mkdtemp(dir=root, prefix="cold-"))
            cold.append(cpu_of(engine_command(files["empty"]), child_env(cold_cache)))
            edited.write_text(f"{original}\n# edited: repetition {repetition}\n", encoding="utf-8")
            edit.append(cpu_of(engine_command(files["empty"]), edit_env))
            if args.reference:
                runs.setdefault(("reference", "lead"), []).append(
                    cpu_of(engine_command(files["lead"]), child_env(root / "cache", "reference"))
                )
                runs.setdefault(("reference", "empty"), []).append(
                    cpu_of(engine_command(files["empty"]), child_env(root / "cache", "reference"))
                )

    med = {key: statistics.median(values) for key, values in runs.items()}

    def per_event(who: str, name: str) -> float:
        return (med[(who, name)] - med[(who, "empty")]) / args.events * 1e6

    def spread(name: str | None) -> str:
        """The engine/floor ratio of each repetition alone (engine and floor ran side by side): its range."""
        if name is None:
            ratios = [e / f for e, f in zip(runs[("engine", "empty")], runs[("floor", "empty")], strict=True)]
        else:
            ratios = [
                (e - e0) / (f - f0)
                for e, e0, f, f0 in zip(
                    runs[("engine", name)],
                    runs[("engine", "empty")],
                    runs[("floor", name)],
                    runs[("floor", "empty")],
                    strict=True,
                )
                if f - f0 > 0
            ]
        return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else ""

    cold_ratios = [c / f for c, f in zip(cold, runs[("floor", "empty")], strict=True)]
    edit_ratios = [c / f for c, f in zip(edit, runs[("floor", "empty")], strict=True)]
    rows = [
        (
            "startup, empty input (ms)",
            med[("engine", "empty")] * 1e3,
            med[("floor", "empty")] * 1e3,
            TARGETS["startup"],
            spread(None),
        ),
        (
            "startup, cold preset cache (ms)",
            statistics.median(cold) * 1e3,
            med[("floor", "empty")] * 1e3,
            TARGETS["cold"],
            f"{min(cold_ratios):.2f}-{max(cold_ratios):.2f}x",
        ),
        (
            "startup, after an edit (ms)",
            statistics.median(edit) * 1e3,
            med[("floor", "empty")] * 1e3,
            TARGETS["cold"],
            f"{min(edit_ratios):.2f}-{max(edit_ratios):.2f}x",
        ),
        (
            "drop, per event (µs)",
            per_event("engine", "drop"),
            per_event("floor", "drop"),
            TARGETS["drop"],
            spread("drop"),
        ),
        (
            "lead, per event (µs)",
            per_event("engine", "lead"),
            per_event("floor", "lead"),
            TARGETS["lead"],
            spread("lead"),
        ),
    ]
    if args.reference:
        rows.append(
            (
                "lead, per event, reference JSONata (µs)",
                per_event("reference", "lead"),
                per_event("floor", "lead"),
                None,
                "",
            )
        )

    print(f"signal-engine whole-process benchmark: {PRESET}, dry run")
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; {args.events} events "
        f"per workload; median of {args.repeat} runs; CPU = user + system of the process"
    )
    print()
    print(f"| {'':<40} | {'engine':>9} | {'floor':>9} | {'engine/floor':>12} | {'per run':>12} | {'target':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 10}:|{'-' * 13}:|{'-' * 13}:|{'-' * 8}:|")
    for label, engine, floor, target, runs_range in rows:
        goal = f"≤ {target:g}x" if target else ""
        print(
            f"| {label:<40} | {engine:>9.1f} | {floor:>9.1f} | {engine / floor:>11.2f}x | {runs_range:>12} | {goal:>7} |"
        )
    if args.json:
        print(
            json.dumps(
                {f"{who}_{name}_cpu_s": round(v, 5) for (who, name), v in med.items()}
                | {
                    "engine_cold_startup_cpu_s": round(statistics.median(cold), 5),
                    "engine_edited_startup_cpu_s": round(statistics.median(edit), 5),
                    "events": args.events,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
