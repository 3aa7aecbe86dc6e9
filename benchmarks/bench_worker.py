"""A Redis worker's cost per lead: round trips to Redis, Redis commands and CPU, beside a delivering ``run``.

Real processes: a private redis-server, the Outreach sandbox (a quota that
never binds), ``serve --redis`` and ``worker`` processes, with the shipped
preset. Each worker starts and settles (its consumer group made, waiting on
an empty stream), is stopped (SIGSTOP) while the intake queues N distinct,
consenting leads, and continued (SIGCONT); a run ends when every lead's
outcome is on the outcome stream (acknowledged). So neither the intake's
work nor the workers' start-up is counted. The figures:

* **round trips per lead**: counted by the worker's own Redis client
  (``benchmarks/round_trips.py`` wraps redis-py's ``send_packed_command``,
  sync and asyncio): one per command sent alone, per pipeline or ``MULTI``
  block, per ``EVALSHA``, whatever the script runs inside Redis. Listed by
  what each carried (``EVALSHA``, ``SET+GET``...), per lead.
* **Redis commands per lead**: ``INFO commandstats`` over the same span,
  split into script calls (``EVALSHA``/``EVAL``), the commands those scripts
  ran inside Redis, and plain commands (those the worker sent, from its
  client's count).
* **CPU per lead**: each worker's CPU (``/proc/<pid>/stat``) from the
  snapshot once it settled to the end, summed, over N.
* **baseline**: in the same repetition, ``signal-engine run`` delivers the
  same N leads to a sandbox of its own (SQLite state); its CPU minus the
  same command over an empty file, over N. The ratio worker/run is the
  figure with a target (≤ 1.3x).
* ``--scaling``: the same backlog worked by one worker, then by two, each
  timed from SIGCONT to the last acknowledgement; the ratio of the two
  throughputs (target ≥ 1.8x). The sandbox and redis-server run on the
  same cores, so their CPU per lead is printed too: with C cores and all
  of them busy, two workers can reach at most C / (worker + sandbox +
  redis CPU per lead) leads a second; and the cores those processes kept
  busy are printed, since on a shared machine that is what they were given.

    .venv/bin/python benchmarks/bench_worker.py --leads 300 --repeat 3
    .venv/bin/python benchmarks/bench_worker.py --scaling --leads 1000 --repeat 3
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_intake import REPO, cpu_seconds, redis_server
from processes import stop

WRITE_KEY = "bench-worker-key-1"
CONSENT = {"consent": {"canonical": {"marketing": True}}}
LISTENING = re.compile(r"listening on http://([^:/\s]+):(\d+)")
COUNTER = Path(__file__).resolve().parent / "round_trips.py"
SCRIPT_CALLS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")


def lead(tag: str, i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Lead Submitted",
        "messageId": f"{tag}-{i}",
        "userId": f"{tag}-u{i}",
        "context": CONSENT,
        "traits": {"email": f"{tag}{i}@bench.test", "firstName": "Ada"},
    }


def launch(argv: list[str], log: Path, env: dict[str, str], wait_for: re.Pattern[str]) -> tuple[Any, re.Match[str]]:
    """Start a process with its output in ``log`` (never a pipe nobody reads), once it has printed ``wait_for``."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = wait_for.search(log.read_text(errors="replace"))
        if match:
            return proc, match
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{argv[:5]} did not start: {log.read_text(errors='replace')[-1500:]}")


def post(host: str, port: int, events: list[dict[str, Any]]) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    for first in range(0, len(events), 100):
        conn.request(
            "POST",
            "/v1/batch",
            body=json.dumps({"batch": events[first : first + 100]}),
            headers={"Content-Type": "application/json", "Authorization": auth},
        )
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
    conn.close()


def start_sandbox(work: Path, name: str) -> tuple[subprocess.Popen[Any], str, Path]:
    """A sandbox (its refresh token rotates: one per run) and settings pointing at it."""
    argv = [sys.executable, "-m", "engine", "sandbox", "outreach", "--port", "0", "--quota", "1000000", "--window", "1"]
    proc, match = launch(argv, work / f"{name}-sandbox.log", {}, LISTENING)
    url = f"http://{match.group(1)}:{match.group(2)}"
    settings = work / f"{name}-outreach.yaml"
    settings.write_text(
        "client_id: sandbox-client\nclient_secret: sandbox-secret\n"
        f"refresh_token: sandbox-refresh-token\nbase_url: {url}\n",
        encoding="utf-8",
    )
    return proc, url, settings


def sandbox_state(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/_sandbox/state", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def snapshot(proc: subprocess.Popen[Any], counts: Path) -> collections.Counter[str]:
    """The worker's round trips so far (round_trips.py writes them on SIGUSR1)."""
    counts.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return collections.Counter(json.loads(counts.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            time.sleep(0.02)
    raise RuntimeError("the worker did not write its round-trip counts")


def workers_run(work: Path, redis_url: str, leads: int, tag: str, workers: int) -> dict[str, Any]:
    """N leads through ``workers`` workers: round trips, commands, CPU and wall time."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    sandbox, sandbox_url, settings = start_sandbox(work, f"{tag}-w")
    env = {"SIGNAL_WRITE_KEYS": WRITE_KEY}
    common = ["outreach/lead-capture", "--settings", str(settings), "--redis", redis_url, "--quiet"]
    serve, match = launch(
        [sys.executable, "-m", "engine", "serve", *common, "--port", "0"], work / f"{tag}-serve.log", env, LISTENING
    )
    procs: list[subprocess.Popen[Any]] = []
    try:
        for n in range(workers):
            proc, _ = launch(
                [sys.executable, str(COUNTER), str(work / f"{tag}-{n}.counts"), "worker", *common],
                work / f"{tag}-worker{n}.log",
                env,
                re.compile(r"consuming"),
            )
            procs.append(proc)
        time.sleep(1.0)  # settled: its group made, waiting on an empty stream
        idle_trips = [snapshot(p, work / f"{tag}-{n}.counts") for n, p in enumerate(procs)]
        idle_cpu = [cpu_seconds(p.pid) for p in procs]
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        post(match.group(1), int(match.group(2)), [lead(tag, i) for i in range(leads)])
        outcomes = next(iter(client.scan_iter(match="*:outcomes")), None)
        client.config_resetstat()
        redis_pid = int(client.info("server")["process_id"])
        redis_cpu, sandbox_cpu = cpu_seconds(redis_pid), cpu_seconds(sandbox.pid)
        started = time.monotonic()
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
        deadline = started + 600
        while (outcomes is None or client.xlen(outcomes) < leads) and time.monotonic() < deadline:
            outcomes = outcomes or next(iter(client.scan_iter(match="*:outcomes")), None)
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker stopped: " + (work / f"{tag}-worker0.log").read_text()[-1500:])
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        if time.monotonic() >= deadline:
            raise RuntimeError("the workers did not acknowledge every lead")
        redis_cpu, sandbox_cpu = cpu_seconds(redis_pid) - redis_cpu, cpu_seconds(sandbox.pid) - sandbox_cpu
        spent = sum(cpu_seconds(p.pid) - idle for p, idle in zip(procs, idle_cpu, strict=True))
        trips: collections.Counter[str] = collections.Counter()
        for n, (proc, before) in enumerate(zip(procs, idle_trips, strict=True)):
            trips += snapshot(proc, work / f"{tag}-{n}.counts") - before
        stats = {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}
        stats = {k: v for k, v in stats.items() if k not in ("info", "config|resetstat", "xlen", "scan")}
        sandbox_seen = sandbox_state(sandbox_url)
        if int(sandbox_seen["creates"]) != leads:
            raise RuntimeError(f"the sandbox created {sandbox_seen['creates']} prospects for {leads} leads")
        return {
            "trips": trips,
            "stats": stats,
            "cpu_us": spent / leads * 1e6,
            "elapsed": elapsed,
            "redis_us": redis_cpu / leads * 1e6,
            "sandbox_us": sandbox_cpu / leads * 1e6,
            "requests": len(sandbox_seen.get("statuses", [])) / leads,
            # Cores the benchmark's own processes kept busy: what the shared machine gave them.
            "busy": (spent + redis_cpu + sandbox_cpu) / elapsed,
        }
    finally:
        for proc in (*procs, serve, sandbox):
            stop(proc)
        client.close()


def child_cpu(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"run failed ({done.returncode}): {done.stderr.decode(errors='replace')[-1500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_baseline(work: Path, leads: int, tag: str) -> float:
    """A delivering ``run`` (SQLite state), CPU per lead: N leads minus an empty file, each to its own sandbox."""
    files = {"leads": "".join(json.dumps(lead(tag, i)) + "\n" for i in range(leads)), "empty": ""}
    cpu = {}
    for name, text in files.items():
        events = work / f"{tag}-{name}.ndjson"
        events.write_text(text, encoding="utf-8")
        sandbox, url, settings = start_sandbox(work, f"{tag}-run-{name}")
        try:
            argv = [sys.executable, "-m", "engine", "run", "outreach/lead-capture", "--settings", str(settings)]
            cpu[name] = child_cpu([*argv, "--state", str(work / f"{tag}-{name}-state"), "--events", str(events)])
            if name == "leads" and int(sandbox_state(url)["creates"]) != leads:
                raise RuntimeError("run did not deliver every lead")
        finally:
            stop(sandbox)
    return (cpu["leads"] - cpu["empty"]) / leads * 1e6


def spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} (spread {min(values):.{digits}f}-{max(values):.{digits}f})"


def split_commands(trips: collections.Counter[str], stats: dict[str, int]) -> dict[str, int]:
    """Redis's count, split: script calls, plain commands the workers sent, and commands run inside scripts."""
    scripts = sum(v for k, v in stats.items() if k in SCRIPT_CALLS)
    plain = 0
    for label, n in trips.items():
        for part in label.split("+"):
            name, _, times = part.partition("x")
            if name.lower() not in SCRIPT_CALLS:
                plain += n * int(times or 1)
    plain -= sum(n for label, n in trips.items() for part in label.split("+") if part in ("MULTI", "EXEC"))
    return {"script calls": scripts, "plain": plain, "inside scripts": sum(stats.values()) - scripts - plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scaling", action="store_true", help="one worker, then two: the ratio of throughputs")
    args = parser.parse_args()
    n = args.leads
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, url = redis_server(work)
        try:
            if args.scaling:
                scaling(work, url, n, args.repeat)
            else:
                costs(work, url, n, args.repeat)
        finally:
            server.kill()
            server.wait()


def costs(work: Path, url: str, n: int, repeat: int) -> None:
    trips: list[float] = []
    commands: list[float] = []
    cpu: list[float] = []
    base: list[float] = []
    ratio: list[float] = []
    last: dict[str, Any] = {}
    for rep in range(repeat):
        last = workers_run(work, url, n, f"r{rep}", 1)
        base.append(run_baseline(work, n, f"b{rep}"))
        trips.append(sum(last["trips"].values()) / n)
        commands.append(sum(last["stats"].values()) / n)
        cpu.append(last["cpu_us"])
        ratio.append(cpu[-1] / base[-1])
        print(
            f"  {trips[-1]:.2f} round trips, {commands[-1]:.1f} commands, {cpu[-1]:.0f} µs CPU per lead "
            f"(run {base[-1]:.0f} µs: {ratio[-1]:.2f}x)",
            file=sys.stderr,
        )
    print(f"Redis worker, {n} leads, {repeat} runs ({last['requests']:.2f} HTTP requests per lead):")
    print(f"  round trips to Redis per lead (the worker's client) {spread(trips, 2)}")
    split = split_commands(last["trips"], last["stats"])
    print(
        f"  Redis commands per lead (INFO commandstats) {spread(commands, 1)}; last run: "
        + ", ".join(f"{k} {v / n:.2f}" for k, v in split.items())
    )
    print(f"  worker CPU per lead {spread(cpu)} µs; delivering run {spread(base)} µs; worker/run {spread(ratio, 2)}x")
    print(
        "  round trips by what they carried, last run, per lead: "
        + ", ".join(f"{k} {v / n:.2f}" for k, v in last["trips"].most_common() if v / n >= 0.005)
    )
    print(
        "  commands, last run, per lead: "
        + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(last["stats"].items(), key=lambda kv: -kv[1]))
    )


def scaling(work: Path, url: str, n: int, repeat: int) -> None:
    ratios: list[float] = []
    rates: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}
    shares: dict[str, list[float]] = {"worker": [], "sandbox": [], "redis": []}
    for rep in range(repeat):
        for k in (1, 2):
            got = workers_run(work, url, n, f"s{rep}-{k}", k)
            rates[k].append(n / got["elapsed"])
            busy[k].append(got["busy"])
            if k == 2:
                shares["worker"].append(got["cpu_us"])
                shares["sandbox"].append(got["sandbox_us"])
                shares["redis"].append(got["redis_us"])
            print(
                f"  {k} worker(s): {rates[k][-1]:.0f} leads/s, {got['cpu_us']:.0f} µs worker CPU, "
                f"{got['busy']:.2f} cores busy",
                file=sys.stderr,
            )
        ratios.append(rates[2][-1] / rates[1][-1])
    cores = os.cpu_count() or 1
    total = sum(statistics.median(v) for v in shares.values())
    print(f"Redis workers, {n} leads, {repeat} runs, {cores} cores:")
    print(f"  one worker {spread(rates[1])} leads/s; two {spread(rates[2])} leads/s; two/one {spread(ratios, 2)}x")
    print(
        "  CPU per lead with two: "
        + ", ".join(f"{k} {spread(v)} µs" for k, v in shares.items())
        + f"; the machine's ceiling for two workers: {cores / total * 1e6:.0f} leads/s"
    )
    print(
        f"  cores the workers, the sandbox and redis-server kept busy: one worker {spread(busy[1], 2)}, "
        f"two {spread(busy[2], 2)} (the rest went to other work on the machine)"
    )


if __name__ == "__main__":
    main()
