"""Instructions per lead (callgrind, deterministic): a Redis worker beside a delivering ``run``, each minus its idle.

CPU on a shared machine swings by a third between runs; instructions do not.
Each figure is a whole process under ``valgrind --tool=callgrind``:

* **run**: ``signal-engine run outreach/lead-capture`` delivering N leads to a
  sandbox of its own (SQLite state), minus the same command over an empty file.
* **worker**: ``signal-engine worker`` with N leads already queued (by
  ``serve --redis``, which then stops), from its start until every outcome is
  on the outcome stream, then SIGTERM; minus a worker that starts on an empty
  stream, settles and is stopped the same way.

Both with ``--no-record`` unless ``--record``. ``--checkout DIR`` measures
another checkout's engine (its ``.venv``) with this script, e.g. the code
before a change. The processes other than the measured one (sandbox, intake,
redis-server) run natively.

    .venv/bin/python benchmarks/cg_worker.py --leads 300
    .venv/bin/python benchmarks/cg_worker.py --leads 300 --checkout ../main --only worker
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_intake import redis_server
from bench_worker import LISTENING, WRITE_KEY, launch, lead, post, sandbox_state, start_sandbox
from processes import stop

SUMMARY = re.compile(rb"^summary: (\d+)", re.M)


def callgrind(checkout: Path, argv: list[str], out: Path) -> list[str]:
    python = checkout / ".venv" / "bin" / "python"
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(python), "-m", "engine", *argv]


def instructions(out: Path) -> int:
    match = SUMMARY.search(out.read_bytes())
    if match is None:
        raise RuntimeError(f"{out}: no summary line")
    return int(match.group(1))


def env_for(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout), "SIGNAL_WRITE_KEYS": WRITE_KEY}


def measure_run(checkout: Path, work: Path, leads: int, record: list[str]) -> int:
    """Instructions per lead of a delivering ``run``: N leads minus an empty file."""
    totals: dict[str, int] = {}
    for name, count in (("leads", leads), ("empty", 0)):
        events = work / f"run-{name}.ndjson"
        events.write_text("".join(json.dumps(lead("cg", i)) + "\n" for i in range(count)), encoding="utf-8")
        sandbox, url, settings = start_sandbox(work, f"run-{name}")
        out = work / f"run-{name}.cg"
        try:
            argv = ["run", "outreach/lead-capture", "--settings", str(settings), "--events", str(events)]
            argv += ["--state", str(work / f"run-{name}-state"), *record]
            subprocess.run(
                callgrind(checkout, argv, out),
                cwd=checkout,
                env=env_for(checkout),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            if count and int(sandbox_state(url)["creates"]) != count:
                raise RuntimeError("run did not deliver every lead")
        finally:
            stop(sandbox)
        totals[name] = instructions(out)
        print(f"  run {name}: {totals[name]:,}", file=sys.stderr, flush=True)
    return (totals["leads"] - totals["empty"]) // leads


def measure_worker(checkout: Path, work: Path, url: str, leads: int, record: list[str]) -> int:
    """Instructions per lead of a worker: N queued leads worked off, minus an idle start and stop."""
    client = redis.Redis.from_url(url)
    totals: dict[str, int] = {}
    try:
        for name, count in (("leads", leads), ("empty", 0)):
            client.flushall()
            sandbox, sandbox_url, settings = start_sandbox(work, f"worker-{name}")
            common = ["outreach/lead-capture", "--settings", str(settings), "--redis", url, "--quiet", *record]
            out = work / f"worker-{name}.cg"
            proc: subprocess.Popen[Any] | None = None
            try:
                serve, match = launch(
                    [sys.executable, "-m", "engine", "serve", *common, "--port", "0"],
                    work / f"serve-{name}.log",
                    {"SIGNAL_WRITE_KEYS": WRITE_KEY},
                    LISTENING,
                )
                try:
                    post(match.group(1), int(match.group(2)), [lead("cg", i) for i in range(count)])
                finally:
                    stop(serve)
                log = work / f"worker-{name}.log"
                with log.open("w") as sink:
                    proc = subprocess.Popen(
                        callgrind(checkout, ["worker", *common], out),
                        cwd=checkout,
                        env=env_for(checkout),
                        stdout=subprocess.DEVNULL,
                        stderr=sink,
                    )
                deadline = time.monotonic() + 1800
                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        raise RuntimeError(f"the worker stopped: {log.read_text()[-1500:]}")
                    if "consuming" in log.read_text(errors="replace"):
                        outcomes = next(iter(client.scan_iter(match="*:outcomes")), None)
                        if count == 0 or (outcomes is not None and client.xlen(outcomes) >= count):
                            break
                    time.sleep(0.2)
                else:
                    raise RuntimeError("the worker did not finish in time")
                if count == 0:
                    time.sleep(2.0)  # settled: waiting on the empty stream, as the other one ends
                stop(proc)
                proc = None
                if count and int(sandbox_state(sandbox_url)["creates"]) != count:
                    raise RuntimeError("the worker did not deliver every lead once")
            finally:
                if proc is not None:
                    stop(proc)
                stop(sandbox)
            totals[name] = instructions(out)
            print(f"  worker {name}: {totals[name]:,}", file=sys.stderr, flush=True)
    finally:
        client.close()
    return (totals["leads"] - totals["empty"]) // leads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--checkout", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--record", action="store_true", help="both with their record (default: --no-record)")
    parser.add_argument("--only", choices=("run", "worker"), help="measure one of the two")
    parser.add_argument("--keep", type=Path, help="copy the callgrind files here (for callgrind_annotate)")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    record = [] if args.record else ["--no-record"]
    figures: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, url = redis_server(work)
        try:
            if args.only != "worker":
                figures["run"] = measure_run(checkout, work, args.leads, record)
            if args.only != "run":
                figures["worker"] = measure_worker(checkout, work, url, args.leads, record)
        finally:
            server.kill()
            server.wait()
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for found in work.glob("*.cg"):
                shutil.copy(found, args.keep / found.name)
    setting = "with the record" if args.record else "--no-record"
    print(f"{checkout}, {args.leads} leads, {setting}, instructions per lead:")
    print("  " + ", ".join(f"{k} {v / 1e3:,.0f}k" for k, v in figures.items()))
    if len(figures) == 2:
        print(f"  worker/run {figures['worker'] / figures['run']:.3f}x")


if __name__ == "__main__":
    main()
