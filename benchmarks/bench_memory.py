"""Peak resident memory of the real CLI where the work is large: identity, dead letters, an outage.

    .venv/bin/python benchmarks/bench_memory.py [--identify N] [--letters N] [--outage N,M] [--only WHAT] [--json]

Each figure is the peak RSS (``ru_maxrss`` of the reaped child, taken by a
small interpreter that starts it) of one ``signal-engine`` process, next to the same command's
peak over an empty input, measured in the same run:

- **identify**: ``run outreach/lead-capture --dry-run`` over N identify calls
  (default 1,000,000), each with a userId, an anonymousId and six traits:
  2N ids for the identity memory, bounded at 128 MiB of process memory.
- **dlq**: ``dlq list`` and ``dlq replay`` over N dead letters (default
  30,000) of realistic size, the replay against the Outreach sandbox (a
  process of its own) with the client rate limit lifted.
- **outage**: a delivering ``run`` while the token endpoint is down (the
  sandbox's ``--token-outage``): every event is dead-lettered. Two sizes
  (default 20,000 and 60,000 events: past the first few thousand, which fill
  SQLite's 8 MiB page cache); the figure is the growth per event.

Nothing is asserted here: tests/test_memory_bounds.py holds the bounds at a
smaller scale.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PRESET = "outreach/lead-capture"
SANDBOX_CREDS = {
    "client_id": "sandbox-client",
    "client_secret": "sandbox-secret",
    "refresh_token": "sandbox-refresh-token",
}


# A child's peak RSS starts at its parent's size when it is forked: this process is large by now (it
# built the inputs), so the command is started by a small interpreter of its own, which reports.
_WRAPPER = """
import json, resource, subprocess, sys
with open(sys.argv[1], "wb") as err:
    code = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=err).returncode
print(json.dumps([code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
"""


def cli(*args: Any) -> tuple[int, float, float, str]:
    """Run ``signal-engine ARGS``: exit code, peak RSS in MiB, seconds, the last line of stderr."""
    started = time.perf_counter()
    with tempfile.NamedTemporaryFile(suffix=".err") as err:
        done = subprocess.run(
            [sys.executable, "-c", _WRAPPER, err.name, sys.executable, "-m", "engine", *map(str, args)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        code, peak_kib = json.loads(done.stdout)
        lines = Path(err.name).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return code, peak_kib / 1024, time.perf_counter() - started, lines[-1] if lines else ""


def write_lines(path: Path, items: Iterator[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(item) + "\n")


def identify(i: int) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": f"user-{i:08d}",
        "anonymousId": f"anon-{i:08d}-4f1c-9a7e",
        "messageId": f"m-{i}",
        "traits": {
            "email": f"person{i}@example.com",
            "firstName": "Jane",
            "lastName": "Doe",
            "company": "Acme Inc",
            "title": "Head of Growth",
            "phone": "+44 7700 900123",
        },
    }


def lead(i: int, tag: str) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Demo Requested",
        "userId": f"{tag}-{i}",
        "messageId": f"{tag}-{i}",
        "context": {"consent": {"canonical": {"marketing": True}}},
        "traits": {
            "email": f"{tag}{i}@bench.test",
            "firstName": "Jane",
            "lastName": "Doe",
            "company": "Acme Inc",
            "title": "Head of Growth",
            "phone": "+44 7700 900123",
        },
    }


class Sandbox:
    """``signal-engine sandbox outreach`` on a free port, in a process of its own."""

    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine",
                "sandbox",
                "outreach",
                "--port",
                "0",
                "--quota",
                "100000000",
                "--mint-limit",
                "0",
                *flags,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        found = re.search(r"http://127\.0\.0\.1:[0-9]+", self.proc.stdout.readline())
        if not found:
            self.close()
            raise SystemExit("the sandbox did not start")
        self.url = found.group(0)

    def settings(self, path: Path) -> Path:
        path.write_text(
            "".join(f"{k}: {v}\n" for k, v in {**SANDBOX_CREDS, "base_url": self.url}.items()), encoding="utf-8"
        )
        return path

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unthrottled_preset(directory: Path, *, attempts: int | None = None) -> Path:
    """The shipped preset with the client rate limit lifted (and, if asked, fewer, quicker retries)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    data = yaml.load((REPO / "presets" / "outreach" / "lead-capture.yaml").read_text(encoding="utf-8"))
    data["delivery"]["rate_limit"].update(requests=100_000_000, per_seconds=1)
    if attempts is not None:
        data["delivery"]["retries"]["max_attempts"] = attempts
        data["delivery"]["retries"]["backoff"].update(initial_seconds=0.001, max_seconds=0.001)
    path = directory / "lead-capture-bench.yaml"
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(data, handle)
    return path


def seed_letters(state_dir: Path, n: int, base_url: str) -> None:
    """N dead letters as a run writes them (the event's masked request, a 503 answer), in one transaction."""
    from engine import outcome as oc
    from engine.compile.compiler import load_preset
    from engine.language.settings import resolve
    from engine.pipeline.prepare import Pipeline
    from engine.state.dead_letters import entry_for
    from engine.state.journal import event_key
    from engine.state.sqlite import SqliteState

    preset = load_preset(PRESET)
    pipeline = Pipeline(preset, resolve(preset.settings, {**SANDBOX_CREDS, "base_url": base_url}, require=False))
    rows = []
    for i in range(n):
        event = lead(i, "letter")
        prepared = pipeline.prepare(event, i)
        assert not isinstance(prepared, oc.Outcome), prepared
        request = prepared.masked_request(preset.auth)
        result = oc.Outcome(
            i,
            event["messageId"],
            oc.DEAD_LETTERED,
            cause="http_503",
            detail="gave up after 5 attempts: 503 Service Unavailable",
            attempts=5,
            request=request,
            response={"status": 503, "body": {"errors": [{"title": "Service Unavailable"}]}},
        )
        entry = entry_for(preset.name, prepared.action.name, result, request, event_key(event))
        rows.append((entry["id"], entry["preset"], entry["key"], 1_000_000 + i, json.dumps(entry)))
    state = SqliteState(state_dir)
    with state.db.write() as cur:
        cur.executemany("INSERT INTO dead_letters (id, preset, key, added_at, entry) VALUES (?, ?, ?, ?, ?)", rows)
    state.close()


def bench_identify(n: int, work: Path, report: Callable[..., None]) -> None:
    empty = work / "empty.ndjson"
    empty.write_text("", encoding="utf-8")
    events = work / "identify.ndjson"
    write_lines(events, (identify(i) for i in range(n)))
    _, base, _, _ = cli("run", PRESET, "--dry-run", "--events", empty)
    code, peak, seconds, summary = cli("run", PRESET, "--dry-run", "--events", events)
    report("identify", f"dry run, {n:,} identify calls", peak, base, seconds, code, summary)


def bench_dlq(n: int, work: Path, report: Callable[..., None]) -> None:
    empty_state = work / "no-letters"
    empty_state.mkdir()
    with Sandbox() as sandbox:
        settings = sandbox.settings(work / "settings.yaml")
        preset = unthrottled_preset(work)
        state = work / "letters"
        seed_letters(state, n, sandbox.url)
        _, base, _, _ = cli("dlq", "list", PRESET, "--state", empty_state)
        code, peak, seconds, summary = cli("dlq", "list", PRESET, "--state", state)
        report("dlq list", f"{n:,} letters", peak, base, seconds, code, summary)
        _, base, _, _ = cli("dlq", "replay", preset, "--settings", settings, "--state", empty_state)
        code, peak, seconds, summary = cli("dlq", "replay", preset, "--settings", settings, "--state", state)
        report("dlq replay", f"{n:,} letters", peak, base, seconds, code, summary)


def bench_outage(sizes: list[int], work: Path, report: Callable[..., None]) -> None:
    peaks = {}
    with Sandbox("--token-outage", "100000") as sandbox:
        settings = sandbox.settings(work / "outage-settings.yaml")
        preset = unthrottled_preset(work, attempts=2)
        for n in sizes:
            events = work / f"leads-{n}.ndjson"
            write_lines(events, (lead(i, f"down{n}") for i in range(n)))
            code, peaks[n], seconds, summary = cli(
                "run", preset, "--events", events, "--settings", settings, "--state", work / f"outage-{n}"
            )
            report("outage", f"run, token endpoint down, {n:,} events", peaks[n], None, seconds, code, summary)
    low, high = min(sizes), max(sizes)
    per_event = (peaks[high] - peaks[low]) * 1024 * 1024 / (high - low)
    print(f"  outage: {per_event:,.0f} bytes of peak RSS per event from {low:,} to {high:,} events")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identify", type=int, default=1_000_000, metavar="N")
    parser.add_argument("--letters", type=int, default=30_000, metavar="N")
    parser.add_argument("--outage", default="20000,60000", metavar="N,M")
    parser.add_argument("--only", choices=("identify", "dlq", "outage"), action="append")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    only = set(args.only or ("identify", "dlq", "outage"))
    figures: list[dict[str, Any]] = []

    def report(name: str, what: str, peak: float, base: float | None, seconds: float, code: int, summary: str) -> None:
        figures.append(
            {
                "name": name,
                "what": what,
                "peak_mib": round(peak, 1),
                "empty_input_mib": None if base is None else round(base, 1),
                "seconds": round(seconds, 1),
                "exit": code,
            }
        )
        versus = "" if base is None else f" (empty input: {base:.0f} MiB)"
        print(
            f"  {name}: {what}: peak RSS {peak:.0f} MiB{versus}, {seconds:.1f}s, exit {code}\n      {summary}",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        if "identify" in only:
            bench_identify(args.identify, work, report)
        if "dlq" in only:
            bench_dlq(args.letters, work, report)
        if "outage" in only:
            bench_outage(sorted(int(n) for n in args.outage.split(",")), work, report)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
