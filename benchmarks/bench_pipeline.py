"""In-process CPU per event of ``Pipeline.prepare``, and of its stages, against the hand-written floor.

The whole-process figures (``bench_process.py``) are the ones that count;
this one shows where an event's time goes, without JSON parsing, output or
interpreter start-up:

- (a) drop path and (b) lead path, engine ``Pipeline.prepare`` against the
  floor's ``outcome()`` (``floor.py``) on the same prebuilt event dicts;
- the lead path's stages, each timed alone on the inputs the pipeline gave it.

Each measurement is the median of K passes, engine and floor interleaved.
Timings are not asserted anywhere: the machine is shared and noisy.

    .venv/bin/python benchmarks/bench_pipeline.py [--events N] [--repeat K] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import floor
from workloads import drop_events, lead_events

from engine.compile.compiler import load_preset
from engine.language.settings import resolve
from engine.pipeline import prepare as prepare_module
from engine.pipeline.prepare import Pipeline
from engine.pipeline.transform import normalise_traits

PRESET = "outreach/lead-capture"


def cpu_per_item(fn: Callable[[Any], Any], items: list[Any]) -> float:
    """µs of CPU per item for one pass."""
    gc.collect()
    start = time.process_time_ns()
    for item in items:
        fn(item)
    return (time.process_time_ns() - start) / len(items) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, metavar="N", help="events per pass (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, metavar="K", help="passes; median reported (default 5)")
    parser.add_argument("--json", action="store_true", help="also print the medians as one JSON line")
    args = parser.parse_args(argv)

    preset = load_preset(PRESET)
    pipeline = Pipeline(preset, resolve(preset.settings, {}, require=False))
    drops, leads = drop_events(args.events), lead_events(args.events)
    memory: dict[str, Any] = {}

    # Same decisions and documents, or the comparison means nothing.
    for index, event in enumerate(drops[:500] + leads[:500]):
        assert pipeline.dry_run(event, index).to_dict() == floor.outcome(index, event, memory), event

    # The inputs each stage saw on the lead path.
    contexts: list[Any] = []
    original = prepare_module.build_document

    def recording(action: Any, expression: Any, context: Any, where: str) -> Any:
        contexts.append(context)
        return original(action, expression, context, where)

    prepare_module.build_document = recording
    try:
        for event in leads:
            pipeline.prepare(event)
    finally:
        prepare_module.build_document = original
    action = preset.actions["create_prospect"]
    documents = [action.mapping.evaluate(c) for c in contexts]
    shaped = [action.contract.shape(d, omit_empty=True, truncate=True) for d in documents]
    raws = [{**(e.get("traits") or {})} for e in leads]
    traits = preset.identity.traits

    cases: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "drop engine": (pipeline.prepare, drops),
        "drop floor": (lambda e: floor.outcome(0, e, memory), drops),
        "lead engine": (pipeline.prepare, leads),
        "lead floor": (lambda e: floor.outcome(0, e, memory), leads),
        "stage: trait normalisers (phonenumbers)": (lambda r: normalise_traits(traits, r, skip="email"), raws),
        "stage: the mapping (plain-template fast path)": (action.mapping.evaluate, contexts),
        "stage: omit empty + truncate, one pass": (
            lambda d: action.contract.shape(d, omit_empty=True, truncate=True),
            documents,
        ),
        "stage: output validation (jsonschema-rs)": (action.contract.check, shaped),
    }
    for fn, items in cases.values():  # warm-up
        for item in items[:300]:
            fn(item)
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):
        for name, (fn, items) in cases.items():
            runs[name].append(cpu_per_item(fn, items))
    med = {name: statistics.median(values) for name, values in runs.items()}

    print(f"signal-engine in-process pipeline benchmark: {PRESET}")
    print(
        f"python {platform.python_version()} on {platform.machine()}, {args.events} events per pass, "
        f"median of {args.repeat} passes, CPU µs per event"
    )
    print()
    print(f"| {'path':<28} | {'engine':>8} | {'floor':>8} | {'engine/floor':>12} |")
    print(f"|{'-' * 30}|{'-' * 9}:|{'-' * 9}:|{'-' * 13}:|")
    for path in ("drop", "lead"):
        engine, base = med[f"{path} engine"], med[f"{path} floor"]
        print(f"| {path + ' (Pipeline.prepare)':<28} | {engine:>8.2f} | {base:>8.2f} | {engine / base:>11.2f}x |")
    print()
    print(f"| {'lead-path stage, alone':<42} | {'µs/event':>8} |")
    print(f"|{'-' * 44}|{'-' * 9}:|")
    for name, value in med.items():
        if name.startswith("stage: "):
            print(f"| {name[7:]:<42} | {value:>8.2f} |")
    if args.json:
        print(json.dumps({name.replace(" ", "_"): round(value, 3) for name, value in med.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
