"""A Redis worker's cost per lead: Redis commands (from INFO commandstats) and the worker process's CPU.

Real processes: a private redis-server, the Outreach sandbox (a quota that
never binds), ``serve --redis`` and one ``worker``, with the shipped
preset. The intake queues N distinct, consenting leads first (its commands
are not counted); then the command counters are reset, the worker starts,
and the run ends when the sandbox has created every lead. The figures:

* **commands per lead**: every command Redis ran meanwhile (``INFO
  commandstats``, calls summed) over N, by command. Commands a script runs
  inside Redis are counted too, so this is an upper bound on the worker's
  round trips (a pipeline of k commands is one round trip, k commands).
* **CPU per lead**: the worker's CPU (``/proc/<pid>/stat``) at the end,
  minus the same worker's start-up (its CPU once it has created its
  consumer group and waits, before any entry is queued), over N.

    .venv/bin/python benchmarks/bench_worker.py --leads 500 --repeat 3
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
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
from bench_intake import REPO, cpu_seconds, redis_server, start, stop

WRITE_KEY = "bench-worker-key-1"
CONSENT = {"consent": {"canonical": {"marketing": True}}}


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


def created(base: str) -> int:
    with urllib.request.urlopen(f"{base}/_sandbox/state", timeout=10) as resp:
        return int(json.loads(resp.read())["creates"])


def one(work: Path, redis_url: str, leads: int, tag: str) -> tuple[dict[str, int], float]:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    sandbox, sandbox_host, sandbox_port = start(
        [sys.executable, "-m", "engine", "sandbox", "outreach", "--port", "0", "--quota", "1000000", "--window", "1"],
        work,
        {},
    )
    sandbox_url = f"http://{sandbox_host}:{sandbox_port}"
    settings = work / "outreach.yaml"
    settings.write_text(
        "client_id: sandbox-client\nclient_secret: sandbox-secret\n"
        f"refresh_token: sandbox-refresh-token\nbase_url: {sandbox_url}\n",
        encoding="utf-8",
    )
    env = {"SIGNAL_WRITE_KEYS": WRITE_KEY}
    common = ["outreach/lead-capture", "--settings", str(settings), "--redis", redis_url, "--quiet"]
    serve, host, port = start([sys.executable, "-m", "engine", "serve", *common, "--port", "0"], REPO, env)
    worker = None
    try:
        worker = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", *common],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        time.sleep(3.0)  # started, its group created, waiting on an empty stream
        idle = cpu_seconds(worker.pid)
        client.config_resetstat()
        events = [
            {
                "type": "track",
                "event": "Lead Submitted",
                "messageId": f"{tag}-{i}",
                "userId": f"{tag}-u{i}",
                "context": CONSENT,
                "traits": {"email": f"{tag}{i}@bench.test", "firstName": "Ada"},
            }
            for i in range(leads)
        ]
        post(host, port, events)
        intake_calls = {k: v["calls"] for k, v in client.info("commandstats").items()}
        deadline = time.monotonic() + 600
        while created(sandbox_url) < leads:
            if time.monotonic() > deadline:
                raise RuntimeError("the sandbox did not receive every lead")
            time.sleep(0.05)
        time.sleep(0.5)  # the last acknowledgements
        spent = cpu_seconds(worker.pid) - idle
        calls = {k: v["calls"] - intake_calls.get(k, 0) for k, v in client.info("commandstats").items()}
        calls = {k.removeprefix("cmdstat_"): v for k, v in calls.items() if v and not k.startswith("cmdstat_info")}
        return calls, spent / leads * 1e6
    finally:
        for proc in (worker, serve, sandbox):
            if proc is not None:
                stop(proc)  # type: ignore[arg-type]
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    per_lead: list[float] = []
    cpu: list[float] = []
    last: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, url = redis_server(work)
        try:
            for rep in range(args.repeat):
                last, micros = one(work, url, args.leads, f"r{rep}")
                per_lead.append(sum(last.values()) / args.leads)
                cpu.append(micros)
                print(f"  {per_lead[-1]:.1f} commands, {micros:.0f} µs CPU per lead", file=sys.stderr)
        finally:
            server.kill()
            server.wait()
    print(f"Redis worker, {args.leads} leads, {args.repeat} runs:")
    print(
        f"  Redis commands per lead {statistics.median(per_lead):.1f} (spread {min(per_lead):.1f}-{max(per_lead):.1f})"
    )
    print(f"  worker CPU per lead {statistics.median(cpu):.0f} µs (spread {min(cpu):.0f}-{max(cpu):.0f})")
    print(
        "  by command, last run, per lead: "
        + ", ".join(f"{name} {n / args.leads:.2f}" for name, n in sorted(last.items(), key=lambda kv: -kv[1]))
    )


if __name__ == "__main__":
    main()
