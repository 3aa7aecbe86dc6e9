"""What the Outreach sandbox costs to serve an upsert, with thousands of prospects stored.

A demo or a delivery benchmark against a sandbox should measure the engine,
not the fake. Each lead is what the engine's upsert does: a look-up by email
(``GET /api/v2/prospects?filter[emails]=...``) and a create (``POST``). The
sandbox runs in a process of its own; the figure is its CPU time (user +
system, from ``/proc/<pid>/stat``) over a block of leads, after ``--stored``
prospects have been created the same way, as leads per CPU second. The
client is a plain keep-alive ``http.client`` connection so that it stays out
of the way. No timing is asserted anywhere.

    .venv/bin/python benchmarks/bench_sandbox.py [--stored N] [--leads N] [--repeat K] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_delivery import CREDS, start_sandbox

JSONAPI = "application/vnd.api+json"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, from /proc (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Client:
    def __init__(self, base: str) -> None:
        parsed = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        body = urllib.parse.urlencode({**CREDS, "grant_type": "refresh_token"})
        status, answer = self.call("POST", "/oauth/token", body, "application/x-www-form-urlencoded")
        if status != 200:
            raise SystemExit(f"token refresh failed: {status} {answer}")
        self.token = answer["access_token"]

    def call(self, method: str, path: str, body: str | None = None, content_type: str = JSONAPI) -> tuple[int, dict]:
        headers = {"Content-Type": content_type}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")

    def upsert(self, i: int) -> None:
        email = f"lead{i}@bench.example"
        status, found = self.call("GET", f"/api/v2/prospects?filter[emails]={email}")
        if status != 200 or found["data"]:
            raise SystemExit(f"look-up {i}: {status} {found}")
        document = {"data": {"type": "prospect", "attributes": {"emails": [email], "firstName": f"Lead{i}"}}}
        status, created = self.call("POST", "/api/v2/prospects", json.dumps(document))
        if status != 201:
            raise SystemExit(f"create {i}: {status} {created}")


def one_run(stored: int, leads: int) -> float:
    proc, base = start_sandbox(10_000_000, 3600, "clock")
    try:
        client = Client(base)
        for i in range(stored):
            client.upsert(i)
        before = cpu_seconds(proc.pid)
        for i in range(stored, stored + leads):
            client.upsert(i)
        spent = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return leads / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stored", type=int, default=5000, help="prospects created before the measured block")
    parser.add_argument("--leads", type=int, default=1000, help="leads in the measured block")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rates = [one_run(args.stored, args.leads) for _ in range(args.repeat)]
    result = {
        "stored": args.stored,
        "leads": args.leads,
        "leads_per_cpu_second": rates,
        "median": statistics.median(rates),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"Outreach sandbox, {args.stored} prospects stored, {args.leads} upserts (look-up + create) measured, "
        f"{args.repeat} runs"
    )
    print(f"leads per sandbox CPU second: median {result['median']:.0f} (runs: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
