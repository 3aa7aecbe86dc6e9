"""Isolation of integrations: Outreach's delivery time alone, and beside a HubSpot answering 503 to everything.

Real processes: the Outreach and HubSpot sandboxes (``signal-engine
sandbox``) and ``signal-engine serve --config`` (embedded), with the shipped
presets. Each repetition posts the same number of identified leads (an
identify and a lead each) and times, from the first post, until the Outreach
sandbox has created them all:

* **alone**: an integrations file with Outreach only;
* **with a failing HubSpot**: Outreach and HubSpot, the HubSpot sandbox
  answering 503 to every request (its leads retry, then wait in the dead
  letters).

Runs are interleaved, so both see the same machine noise; the figure is the
ratio of the medians (the promise: at most 2). ``--redis`` runs the same on
Redis: ``serve --config --redis`` and one ``worker --config`` delivering for
both integrations, against a redis-server of its own.

    .venv/bin/python benchmarks/bench_integrations.py --leads 200 --repeat 3 [--redis]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from processes import stop

REPO = Path(__file__).resolve().parents[1]
WRITE_KEY = "bench-write-key-1"
TOKEN = "bench-hubspot-token-1"
CONSENT = {"consent": {"canonical": {"marketing": True}}}
LISTENING = re.compile(r"listening on (http://\S+)")


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # serve says where it listens on stderr, a sandbox on stdout
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = LISTENING.search(line)
        if match:
            # Read the rest as it comes (outcome lines): a full pipe would stop the process mid-measure.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, match.group(1)
    raise RuntimeError(f"{args[0]} did not start")


def call(url: str, body: Any = None, auth: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if auth:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth}:".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server, without persistence: what is measured is the engine, not the disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis needs redis-server on the PATH")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def one_run(work: Path, leads: int, with_hubspot: bool, tag: str, redis_url: str | None = None) -> float:
    outreach, outreach_url = start("sandbox", "outreach", "--port", "0", "--quota", "100000", "--window", "1", cwd=work)
    hubspot, hubspot_url = start(
        "sandbox", "hubspot", "--port", "0", "--quota", "100000", "--window", "1", "--access-token", TOKEN, cwd=work
    )
    try:
        call(f"{hubspot_url}/_sandbox/faults", {"fault_mix": {"503": 1.0}})
        (work / "outreach.yaml").write_text(
            f"client_id: sandbox-client\nclient_secret: sandbox-secret\nrefresh_token: sandbox-refresh-token\n"
            f"base_url: {outreach_url}\n",
            encoding="utf-8",
        )
        config = work / f"{tag}.yaml"
        text = "integrations:\n  outreach:\n    preset: outreach/lead-capture\n    settings_file: outreach.yaml\n"
        if with_hubspot:
            text += (
                "  hubspot:\n    preset: hubspot/contacts\n    settings:\n"
                f'      access_token: "${{HUBSPOT_TOKEN}}"\n      base_url: {hubspot_url}\n'
            )
        config.write_text(text, encoding="utf-8")
        env = {"SIGNAL_WRITE_KEYS": WRITE_KEY, "HUBSPOT_TOKEN": TOKEN}
        where = ["--redis", redis_url] if redis_url else ["--state", str(work / f"state-{tag}")]
        serve, url = start("serve", "--config", str(config), *where, "--port", "0", "--quiet", cwd=work, env=env)
        worker = None
        if redis_url:
            worker = subprocess.Popen(
                [sys.executable, "-m", "engine", "worker", "--config", str(config), "--redis", redis_url, "--quiet"],
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, **env},
            )
        try:
            started = time.perf_counter()
            for first in range(0, leads, 50):
                batch = []
                for i in range(first, min(leads, first + 50)):
                    user = f"{tag}-u{i}"
                    batch.append(
                        {
                            "type": "identify",
                            "userId": user,
                            "context": CONSENT,
                            "messageId": f"{tag}-id-{i}",
                            "traits": {"email": f"{tag}{i}@bench.test", "firstName": "B"},
                        }
                    )
                    batch.append(
                        {
                            "type": "track",
                            "event": "Demo Requested",
                            "userId": user,
                            "context": CONSENT,
                            "messageId": f"{tag}-lead-{i}",
                        }
                    )
                call(f"{url}/v1/batch", {"batch": batch}, auth=WRITE_KEY)
            deadline = time.monotonic() + 300
            while call(f"{outreach_url}/_sandbox/state")["creates"] < leads:
                if time.monotonic() > deadline:
                    raise RuntimeError("Outreach did not receive every lead")
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            if with_hubspot:
                assert call(f"{hubspot_url}/_sandbox/state")["creates"] == 0  # the storm held all along
            return elapsed
        finally:
            for proc in (serve, worker):
                if proc is not None:
                    proc.kill()  # its HubSpot leads are still retrying: not what is measured
                    proc.wait()
    finally:
        stop(outreach)
        stop(hubspot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis", action="store_true", help="serve --redis and a worker, on a private redis-server")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    alone: list[float] = []
    storm: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeat):
            for tag, with_hubspot, times in ((f"alone{k}", False, alone), (f"storm{k}", True, storm)):
                server, url = redis_server(Path(tmp)) if args.redis else (None, None)
                try:
                    times.append(one_run(Path(tmp), args.leads, with_hubspot, tag, url))
                finally:
                    if server is not None:
                        server.kill()
                        server.wait()
    result = {
        "leads": args.leads,
        "mode": "redis" if args.redis else "embedded",
        "alone_s": statistics.median(alone),
        "with_failing_hubspot_s": statistics.median(storm),
        "ratio": statistics.median(storm) / statistics.median(alone),
        "alone_runs": alone,
        "storm_runs": storm,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"Outreach, {args.leads} leads, {result['mode']}: alone {result['alone_s']:.2f} s, beside a HubSpot "
            f"answering 503 to everything {result['with_failing_hubspot_s']:.2f} s (median of {args.repeat}); ratio "
            f"{result['ratio']:.2f} (the promise: at most 2)"
        )


if __name__ == "__main__":
    main()
