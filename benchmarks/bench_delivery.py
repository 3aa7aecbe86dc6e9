"""Delivery against a quota-enforcing local Outreach: quota used, 429s, and the cost of a drop.

Two measurements, each against a baseline taken in the same run:

1. **Quota.** The Outreach sandbox (a separate process on loopback) enforces
   ``--quota`` requests per ``--window`` seconds and advertises Remaining and
   Reset on every answer. A backlog of distinct leads is delivered with the
   shipped preset; the figure is the requests the server accepted over the
   requests the quota allowed in the elapsed time, and the number of 429s.
   Both window kinds the sandbox offers are run: windows on the clock
   (an hourly quota resetting on the hour) and windows that open with the first
   request after the last one closed.
2. **Drops in delivery mode.** Whole-process CPU of ``signal-engine run`` over
   a file of page views (all dropped), delivering and as a dry run, each minus
   the same command on an empty file (startup). The ratio is the per-drop cost
   of delivery mode over the dry run's.
3. **Recording** (the console's record of recent events). Whole-process CPU
   of ``signal-engine run`` delivering distinct leads to the sandbox (a quota
   that never binds), and over the page views of 2., each with the record
   (the default) and with ``--no-record``, minus the same command on an
   empty file. The ratios are the per-lead and per-drop cost of recording.
   ``--baseline DIR`` runs the same commands from another checkout too,
   interleaved with this one's, for a before/after in one run.

    .venv/bin/python benchmarks/bench_delivery.py --leads 300 --quota 50 --window 5
    .venv/bin/python benchmarks/bench_delivery.py --only-record --record-leads 2000 --drops 20000 --repeat 3 \
        --baseline /tmp/before   # git archive <commit> | tar -x -C /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.runtime import Engine  # noqa: E402

CREDS = {"client_id": "bench-client", "client_secret": "bench-secret-123", "refresh_token": "bench-refresh-456"}
CONSENT = {"consent": {"canonical": {"marketing": True}}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sandbox(quota: int, window: float, alignment: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "sandbox",
            "outreach",
            "--port",
            str(port),
            "--quota",
            str(quota),
            "--window",
            str(window),
            "--window-alignment",
            alignment,
            "--mint-limit",
            "0",
            "--client-id",
            CREDS["client_id"],
            "--client-secret",
            CREDS["client_secret"],
            "--refresh-token",
            CREDS["refresh_token"],
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{base}/_sandbox/state", timeout=0.5).read()
            return proc, base
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the sandbox did not start")


def write_settings(path: Path, base: str) -> Path:
    """Settings of the sandbox's bench client, its API at ``base``."""
    path.write_text("".join(f"{k}: {v}\n" for k, v in {**CREDS, "base_url": base}.items()), encoding="utf-8")
    return path


def run_command(python: str | Path, settings: Path, state: Path, events: Path, *flags: str) -> list[str]:
    """``signal-engine run outreach/lead-capture`` over ``events``, as every delivery benchmark starts it."""
    return [
        str(python),
        "-m",
        "engine",
        "run",
        "outreach/lead-capture",
        "--settings",
        str(settings),
        "--state",
        str(state),
        "--events",
        str(events),
        *flags,
    ]


def lead(i: int) -> dict:
    return {
        "type": "track",
        "event": "Lead Submitted",
        "messageId": f"bench-{i}",
        "userId": f"bench-user-{i}",
        "traits": {"email": f"lead{i}@bench.example", "firstName": f"Lead{i}"},
        "context": CONSENT,
    }


async def deliver_backlog(base: str, leads: int) -> tuple[float, dict[str, int]]:
    settings = {**CREDS, "base_url": base}
    async with Engine.from_preset("outreach/lead-capture", settings) as engine:
        await engine.process(lead(-1))  # mint the token and learn the window before the clock starts
        started = time.monotonic()
        counts: dict[str, int] = {}
        async for outcome in engine.process_many(lead(i) for i in range(leads)):
            counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
        return time.monotonic() - started, counts


def quota_run(leads: int, quota: int, window: float, alignment: str) -> dict:
    """Quota used over the windows the backlog spanned: the first (entered mid-way) and the
    last (the backlog ran out) are left out, the gaps between windows count as unused."""
    proc, base = start_sandbox(quota, window, alignment)
    try:
        elapsed, counts = asyncio.run(deliver_backlog(base, leads))
        state = json.loads(urllib.request.urlopen(f"{base}/_sandbox/state", timeout=5).read())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    statuses = state.get("statuses", [])
    too_many = sum(1 for s in statuses if s == 429)
    windows = state["rate_limit"]["windows"][1:]
    if not windows:
        raise SystemExit("the backlog spanned too few windows to measure: raise --leads")
    used = sum(w[2] for w in windows)
    span = windows[-1][1] - windows[0][0]
    return {
        "alignment": alignment,
        "leads": leads,
        "elapsed_s": round(elapsed, 2),
        "outcomes": counts,
        "windows_measured": len(windows),
        "quota_used": round(used / (quota * span / window), 3),
        "window_fill": round(used / (quota * len(windows)), 3),
        "http_429": too_many,
    }


def child_cpu(args: list[str], env: dict[str, str], cwd: Path = REPO) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def drop_cost(drops: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        page = {
            "type": "page",
            "anonymousId": "anon-1",
            "name": "Home",
            "properties": {"path": "/"},
            "context": CONSENT,
        }
        (folder / "drops.ndjson").write_text(
            "\n".join(json.dumps({**page, "messageId": f"p-{i}"}) for i in range(drops)) + "\n", encoding="utf-8"
        )
        (folder / "empty.ndjson").write_text("", encoding="utf-8")
        settings = write_settings(folder / "settings.yaml", "http://127.0.0.1:9")
        env = {**os.environ, "PYTHONPATH": str(REPO)}

        def command(events: str, *flags: str) -> list[str]:
            return run_command(sys.executable, settings, folder / "state", folder / events, *flags)

        figures: dict[str, list[float]] = {"deliver": [], "dry": [], "deliver_empty": [], "dry_empty": []}
        for _ in range(repeat):  # interleaved, so drift on a shared machine hits both alike
            figures["deliver"].append(child_cpu(command("drops.ndjson"), env))
            figures["deliver_empty"].append(child_cpu(command("empty.ndjson"), env))
            figures["dry"].append(child_cpu(command("drops.ndjson", "--dry-run"), env))
            figures["dry_empty"].append(child_cpu(command("empty.ndjson", "--dry-run"), env))
    med = {k: statistics.median(v) for k, v in figures.items()}
    deliver = (med["deliver"] - med["deliver_empty"]) / drops * 1e6
    dry = (med["dry"] - med["dry_empty"]) / drops * 1e6
    return {
        "drops": drops,
        "deliver_us_per_drop": round(deliver, 2),
        "dry_run_us_per_drop": round(dry, 2),
        "ratio": round(deliver / dry, 2) if dry > 0 else None,
    }


def record_cost(leads: int, drops: int, repeat: int, baseline: Path | None = None) -> dict:
    """CPU per lead and per drop with the record and with --no-record (a sandbox per lead run: its refresh
    token rotates, so a second run with the same settings would not be authorised).

    With ``baseline`` (another checkout), the same commands also run from it, interleaved with this
    checkout's, so the two are measured side by side on the same machine at the same time."""
    checkouts = {"": REPO, **({"baseline": baseline.resolve()} if baseline else {})}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        page = {"type": "page", "anonymousId": "anon-1", "name": "Home", "context": CONSENT}
        files = {
            "leads": "\n".join(json.dumps(lead(i)) for i in range(leads)) + "\n",
            "drops": "\n".join(json.dumps({**page, "messageId": f"p-{i}"}) for i in range(drops)) + "\n",
            "empty": "",
        }
        for name, text in files.items():
            (folder / f"{name}.ndjson").write_text(text, encoding="utf-8")
        figures: dict[str, dict[str, list[float]]] = {tag: {} for tag in checkouts}
        runs = 0
        for _ in range(repeat):  # interleaved; a fresh state directory each time (the journal would skip leads)
            for name in files:
                for flag in ([], ["--no-record"], ["--dry-run"]):
                    for tag, checkout in checkouts.items():
                        runs += 1
                        figures[tag].setdefault(name + SUFFIX[tuple(flag)], []).append(
                            _one_run(folder, checkout, runs, name, flag, leads)
                        )
    return {tag or "engine": _per_kind(figures[tag], leads, drops) for tag in checkouts}


def _one_run(folder: Path, checkout: Path, runs: int, name: str, flag: list[str], leads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    delivering = name == "leads" and "--dry-run" not in flag
    proc, base = start_sandbox(1_000_000, 3600, "clock") if delivering else (None, "http://127.0.0.1:9")
    settings = write_settings(folder / f"settings-{runs}.yaml", base)
    args = run_command(sys.executable, settings, folder / f"state-{runs}", folder / f"{name}.ndjson", *flag)
    try:
        cpu = child_cpu(args, env, cwd=checkout)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    if delivering:
        delivered = _delivered(folder / f"state-{runs}")
        if delivered != leads:
            raise SystemExit(f"only {delivered} of {leads} leads were delivered: not a fair measure")
    return cpu


def _per_kind(figures: dict[str, list[float]], leads: int, drops: int) -> dict:
    med = {k: statistics.median(v) for k, v in figures.items()}

    def per(kind: str, suffix: str, count: int) -> float:
        return (med[kind + suffix] - med["empty" + suffix]) / count * 1e6

    out = {}
    for kind, count in (("leads", leads), ("drops", drops)):
        on, off, dry = per(kind, "", count), per(kind, "-off", count), per(kind, "-dry", count)
        # The ratio of each repetition (its own runs, startup subtracted), for the spread.
        ratios = [
            (a - e) / (b - f)
            for a, b, e, f in zip(
                figures[kind], figures[kind + "-off"], figures["empty"], figures["empty-off"], strict=True
            )
            if b - f > 0
        ]
        out[kind] = {
            "count": count,
            "record_us": round(on, 1),
            "no_record_us": round(off, 1),
            "ratio": round(on / off, 3) if off > 0 else None,
            "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None,
            "dry_run_us": round(dry, 1),
            "vs_dry_run": round(on / dry, 3) if dry > 0 else None,
            "no_record_vs_dry_run": round(off / dry, 3) if dry > 0 else None,
        }
    return out


SUFFIX = {(): "", ("--no-record",): "-off", ("--dry-run",): "-dry"}


def _delivered(state: Path) -> int:
    import sqlite3

    with sqlite3.connect(state / "state.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM journal").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=300, help="backlog size (default 300)")
    parser.add_argument("--quota", type=int, default=50, help="requests per window (default 50)")
    parser.add_argument("--window", type=float, default=5.0, help="window in seconds (default 5)")
    parser.add_argument("--drops", type=int, default=20000, help="page views for the drop-cost run (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of each drop-cost command (default 3)")
    parser.add_argument(
        "--record-leads", type=int, default=2000, help="distinct leads delivered for the recording cost (default 2000)"
    )
    parser.add_argument("--only-record", action="store_true", help="measure only the recording cost")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another checkout (e.g. `git archive COMMIT | tar -x -C DIR`): the recording cost is also measured "
        "from it, interleaved, so a change is compared with what it replaces in the same run",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    record = record_cost(args.record_leads, args.drops, args.repeat, args.baseline)
    if args.only_record:
        print(json.dumps({"record": record}, indent=2))
        return
    results = {
        "quota": [quota_run(args.leads, args.quota, args.window, a) for a in ("clock", "first_request")],
        "drops": drop_cost(args.drops, args.repeat),
        "record": record,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"quota {args.quota} per {args.window:g} s, backlog of {args.leads} distinct leads, concurrency 8")
    print("| windows | elapsed | windows measured | quota used | window fill | 429s | outcomes |")
    print("|---|---|---|---|---|---|---|")
    for r in results["quota"]:
        print(
            f"| {r['alignment']} | {r['elapsed_s']} s | {r['windows_measured']} | {r['quota_used']:.1%} "
            f"| {r['window_fill']:.1%} | {r['http_429']} | {r['outcomes']} |"
        )
    d = results["drops"]
    print(
        f"\ndrops ({d['drops']} page views, CPU per drop, startup subtracted): delivery mode "
        f"{d['deliver_us_per_drop']} µs, dry run {d['dry_run_us_per_drop']} µs, ratio {d['ratio']}×"
    )
    for tag, figures in record.items():
        for kind in ("leads", "drops"):
            r = figures[kind]
            print(
                f"recording ({tag}), CPU per {kind[:-1]} ({r['count']:,} of them, startup subtracted): with the "
                f"record {r['record_us']} µs, --no-record {r['no_record_us']} µs, ratio {r['ratio']}× "
                f"(repetitions {r['ratio_spread']}); dry run {r['dry_run_us']} µs, delivering (recorded) / dry run "
                f"{r['vs_dry_run']}×"
            )


if __name__ == "__main__":
    main()
