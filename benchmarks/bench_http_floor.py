"""What the HTTP exchange alone costs, against a dry-run lead: the floor under a delivering lead.

A delivering lead is a dry-run lead plus one request and its answer (plus
the journal, the rate budget and the outcome). This benchmark measures, in
one run on the same machine:

- a dry-run lead, as ``bench_delivery.py`` does: ``signal-engine run
  outreach/lead-capture --dry-run`` over N leads minus the same command on
  an empty file, whole processes, CPU;
- one request and its answer through the engine's own transport
  (``AiohttpTransport`` on one ``aiohttp.ClientSession``, on the event loop
  ``run`` uses), CPU per request in this process;
- the same exchange written by hand on a bare ``asyncio.Protocol`` (the
  request's bytes built in one f-string, the answer cut at its
  Content-Length): no HTTP client could cost less than the socket calls it
  makes, so this is the floor of any client.

The server is a separate process on loopback that answers every request
at once with a fixed 201 and an Outreach-sized JSON:API document, so its
CPU is not counted and it never waits. Passes are interleaved and the
medians reported with their spread.

    .venv/bin/python benchmarks/bench_http_floor.py [--requests N] [--leads N] [--repeat K] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_delivery import child_cpu, free_port, lead, run_command, write_settings  # noqa: E402

BODY = json.dumps(
    {
        "data": {
            "type": "prospect",
            "id": 12345,
            "attributes": {
                "emails": ["lead1@bench.example"],
                "firstName": "Lead1",
                "tags": ["lead"],
                "createdAt": "2026-12-08T00:00:00.000Z",
                "updatedAt": "2026-12-08T00:00:00.000Z",
            },
            "relationships": {"owner": {"data": None}, "account": {"data": None}},
            "links": {"self": "https://api.outreach.io/api/v2/prospects/12345"},
        }
    },
    separators=(",", ":"),
).encode()
ANSWER = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/vnd.api+json; charset=utf-8\r\n"
    b"X-RateLimit-Limit: 10000\r\nX-RateLimit-Remaining: 9999\r\nX-RateLimit-Reset: 1765152000\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY
DOCUMENT = {
    "data": {
        "type": "prospect",
        "attributes": {"emails": ["lead1@bench.example"], "firstName": "Lead1", "tags": ["lead"]},
    }
}


class _Answering(asyncio.Protocol):
    """The server: answers each complete request (head + Content-Length body) with ``ANSWER``."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(ANSWER)


async def _serve(port: int) -> None:
    await asyncio.get_running_loop().create_server(_Answering, "127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Event().wait()


class _Exchange(asyncio.Protocol):
    """The hand-written client: one request at a time on one connection."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        at = head.lower().find(b"content-length:")
        length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
        assert self.waiter is not None
        self.waiter.set_result((int(head[9:12]), body))


async def _client_passes(port: int, requests: int, repeat: int) -> dict[str, list[float]]:
    import aiohttp
    import orjson

    from engine.delivery.transport import AiohttpTransport
    from engine.envelope import HttpRequest

    url = f"http://127.0.0.1:{port}/api/v2/prospects"
    headers = {"Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"}
    loop = asyncio.get_running_loop()
    figures: dict[str, list[float]] = {"aiohttp": [], "bare": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), raise_for_status=False) as session:
        transport = AiohttpTransport(session, 30)

        async def through_aiohttp() -> None:
            request = HttpRequest("POST", url, {**headers, "Authorization": "Bearer token"}, body=DOCUMENT)
            answer = await transport.send(request)
            assert answer.status == 201, answer.status

        sock, bare = await loop.create_connection(_Exchange, "127.0.0.1", port)

        async def by_hand() -> None:
            body = orjson.dumps(DOCUMENT)
            bare.waiter = loop.create_future()
            sock.write(
                f"POST /api/v2/prospects HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/vnd.api+json\r\nAccept: application/vnd.api+json\r\n"
                f"Authorization: Bearer token\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            status, raw = await bare.waiter
            assert status == 201 and orjson.loads(raw)["data"]["id"] == 12345

        for one in (through_aiohttp, by_hand):
            for _ in range(200):  # warm: connection open, code paths taken once
                await one()
        for _ in range(repeat):
            for name, one in (("aiohttp", through_aiohttp), ("bare", by_hand)):
                start = time.process_time()
                for _ in range(requests):
                    await one()
                figures[name].append((time.process_time() - start) / requests * 1e6)
        sock.close()
    return figures


def _dry_run_leads(leads: int, repeat: int) -> list[float]:
    """µs of CPU per dry-run lead, one figure per repetition (whole processes, start subtracted)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "leads.ndjson").write_text("\n".join(json.dumps(lead(i)) for i in range(leads)) + "\n")
        (folder / "empty.ndjson").write_text("")
        settings = write_settings(folder / "settings.yaml", "http://127.0.0.1:9")
        for n in range(repeat):
            cpu = {}
            for name in ("leads", "empty"):
                state, events = folder / f"state-{name}-{n}", folder / f"{name}.ndjson"
                cpu[name] = child_cpu(run_command(sys.executable, settings, state, events, "--dry-run"), env)
            figures.append((cpu["leads"] - cpu["empty"]) / leads * 1e6)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, metavar="N", help="requests per pass (default 3000)")
    parser.add_argument("--leads", type=int, default=3000, metavar="N", help="leads per dry run (default 3000)")
    parser.add_argument("--repeat", type=int, default=5, metavar="K", help="passes of each (default 5)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from engine.event_loop import run_fast

    if args.serve:
        run_fast(_serve(args.serve))
        return 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        dry = _dry_run_leads(args.leads, args.repeat)
        http = run_fast(_client_passes(port, args.requests, args.repeat))
    finally:
        server.terminate()
        server.wait(timeout=10)
    dry_us = statistics.median(dry)
    result: dict[str, Any] = {
        "dry_run_lead_us": round(dry_us, 1),
        "dry_run_spread": [round(min(dry), 1), round(max(dry), 1)],
    }
    for name, values in http.items():
        us = statistics.median(values)
        result[name] = {
            "us": round(us, 1),
            "spread": [round(min(values), 1), round(max(values), 1)],
            "vs_dry_run_lead": round(us / dry_us, 2),
        }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"dry-run lead: {dry_us:.1f} µs (repetitions {min(dry):.1f}-{max(dry):.1f})")
    for name, label in (
        ("aiohttp", "one request through the engine's transport (aiohttp)"),
        ("bare", "the same exchange on a bare asyncio.Protocol"),
    ):
        r = result[name]
        print(
            f"{label}: {r['us']} µs, {r['vs_dry_run_lead']}x the dry-run lead (passes {r['spread'][0]}-{r['spread'][1]})"
        )
    print(f"a delivering lead within 3x a dry-run lead has {2 * dry_us:.1f} µs for everything delivery adds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
