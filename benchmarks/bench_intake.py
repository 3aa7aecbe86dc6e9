"""The intake's CPU per event, whole process, in batches of 100, beside a floor measured in the same run.

``signal-engine serve --redis`` (the intake alone: delivery is the workers')
takes ``--batches`` posts of 100 events to ``/v1/batch`` on one keep-alive
connection. The figure is the server process's CPU (user + system, from
``/proc/<pid>/stat``) between its first request and its last answer,
divided by the events: start-up is not in it.

Measured in the same run, on the same private redis-server:

* **floor**: a hand-written aiohttp server doing what any intake must: read
  the body, parse it with orjson, ``XADD`` each event in one ``MULTI``,
  answer ``{"success": true}``. No key check, depth check, metrics or
  identity writes.
* **baseline** (``--baseline DIR``): the same ``serve`` command run from
  another checkout (the code before a change), so a before/after ratio comes
  from one run.

Each is run ``--repeat`` times, interleaved; the spread is the range of the
ratio between repetitions.

    .venv/bin/python benchmarks/bench_intake.py --batches 400 --repeat 5 --baseline /work/main

``--sqlite-append`` measures instead, in process, the embedded queue's
write of one request (``SqliteQueue.append``'s transaction, two
integrations): CPU per event of the batched statements against the same
rows inserted one statement each (what it did before), on the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from processes import stop  # beside this script

REPO = Path(__file__).resolve().parents[1]
WRITE_KEY = "bench-intake-key-1"
BATCH = 100
LISTENING = re.compile(r"listening on http://([^:/\s]+):(\d+)")
TICKS = os.sysconf("SC_CLK_TCK")

FLOOR_SERVER = r"""
import asyncio, sys, orjson, time
from aiohttp import web
from redis.asyncio import Redis

async def main():
    r = Redis.from_url(sys.argv[1])
    append = r.register_script(
        "for i = 2, #ARGV do redis.call('XADD', KEYS[1], '*', 'event', ARGV[i], 'at', ARGV[1]) end")
    async def batch(request):
        document = orjson.loads(await request.read())
        now = repr(time.time())
        await append(keys=["floor:events"], args=[now, *(orjson.dumps(e) for e in document["batch"])])
        return web.json_response({"success": True, "queued": len(document["batch"])})
    app = web.Application(client_max_size=1 << 20)
    app.router.add_post("/v1/batch", batch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench_intake needs redis-server on the PATH")
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


def start(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, int]:
    # ``serve`` says where it listens on stderr (its stdout is for outcome lines), the floor on stdout: read both.
    proc = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env}
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = LISTENING.search(line)
        if match:
            # Keep reading what it says afterwards, so a full pipe never stalls the server being measured.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, match.group(1), int(match.group(2))
    raise RuntimeError(f"{argv} did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def bodies(batches: int, tag: str, identifies: int) -> list[bytes]:
    """Batches of 100: page views, tracks and ``identifies`` identifies in a hundred (a site's traffic)."""
    rng = random.Random(7)
    consent = {"consent": {"canonical": {"marketing": True}}}
    out = []
    for b in range(batches):
        batch = []
        for i in range(BATCH):
            n = b * BATCH + i
            user = f"{tag}-u{rng.randrange(1_000_000)}"
            context = {
                **consent,
                "page": {
                    "url": f"https://www.example.com/p/{n % 50}?utm_source=x",
                    "title": "Pricing",
                    "referrer": "https://search.example/",
                },
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
            }
            if identifies and i % (BATCH // identifies) == 0:
                event = {
                    "type": "identify",
                    "userId": user,
                    "traits": {"email": f"{user}@bench.test", "firstName": "Ada", "company": "Bench"},
                }
            elif i % 3 == 0:
                event = {
                    "type": "track",
                    "event": "Demo Requested",
                    "userId": user,
                    "properties": {"plan": "pro", "seats": 12, "price": 9.5},
                }
            else:
                event = {"type": "page", "anonymousId": user, "name": "Pricing"}
            event.update(messageId=f"{tag}-{n}", timestamp="2026-12-07T10:00:00.000Z", context=context)
            batch.append(event)
        out.append(json.dumps({"batch": batch}).encode())
    return out


def post_all(host: str, port: int, payloads: list[bytes], pid: int) -> float:
    """Post every batch on one connection; the server's CPU seconds from the first request to the last answer."""
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    conn = http.client.HTTPConnection(host, port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": auth}
    conn.request("POST", "/v1/batch", body=payloads[0], headers=headers)  # warm: the first request's imports
    conn.getresponse().read()
    before = cpu_seconds(pid)
    for body in payloads[1:]:
        conn.request("POST", "/v1/batch", body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {answer[:200]!r}")
    spent = cpu_seconds(pid) - before
    conn.close()
    return spent


def one(kind: str, work: Path, redis_url: str, batches: int, tag: str, baseline: Path | None, identifies: int) -> float:
    """CPU µs per event of one server kind: engine, baseline or floor."""
    env = {"SIGNAL_WRITE_KEYS": WRITE_KEY}
    with socket.create_connection(("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0]))) as sock:
        sock.sendall(b"FLUSHALL\r\n")  # each run starts from an empty Redis: no backlog, no memory pressure
        sock.recv(64)
    if kind == "floor":
        argv, cwd = [sys.executable, "-c", FLOOR_SERVER, redis_url], work
    else:
        cwd = baseline if kind == "baseline" and baseline is not None else REPO
        argv = [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "outreach/lead-capture",
            "--settings",
            str(work / "outreach.yaml"),
            "--redis",
            redis_url,
            "--port",
            "0",
            "--quiet",
            "--max-backlog",
            str(2 * batches * BATCH),
        ]  # no worker drains the stream here
    proc, host, port = start(argv, cwd, env)
    try:
        return post_all(host, port, bodies(batches + 1, tag, identifies), proc.pid) / (batches * BATCH) * 1e6
    finally:
        stop(proc)


def sqlite_append(batches: int, repeat: int) -> None:
    sys.path.insert(0, str(REPO))
    from engine.state.sqlite.queue import SqliteQueue

    def row_by_row(queue: SqliteQueue, rows: list[tuple[str, float]]) -> None:
        with queue._lock, queue._transaction(RuntimeError):
            for row in rows:
                entry = queue.conn.execute("INSERT INTO queue (body, enqueued_at) VALUES (?, ?)", row).lastrowid
                queue.conn.executemany(
                    "INSERT INTO pending (integration, id) VALUES (?, ?)",
                    [(name, entry) for name in queue.integrations],
                )

    with tempfile.TemporaryDirectory() as tmp:
        queue = SqliteQueue(tmp, integrations=("outreach", "hubspot"))
        payload = json.loads(bodies(1, "sqlite", 10)[0])["batch"]
        rows = [(json.dumps(e, separators=(",", ":")), time.time()) for e in payload]
        runs: dict[str, list[float]] = {"batched": [], "row by row": []}
        for _ in range(repeat):
            for name, write in (("batched", queue._insert), ("row by row", lambda r: row_by_row(queue, r))):
                start = time.process_time()
                for _ in range(batches):
                    write(rows)
                runs[name].append((time.process_time() - start) / (batches * BATCH) * 1e6)
        asyncio.run(queue.close())
    ratios = [b / a for a, b in zip(runs["batched"], runs["row by row"], strict=True)]
    print(f"embedded queue write, CPU per event in batches of {BATCH}, two integrations ({repeat} runs):")
    print(
        f"  batched {statistics.median(runs['batched']):.2f} µs, row by row "
        f"{statistics.median(runs['row by row']):.2f} µs: {statistics.median(ratios):.2f}x "
        f"(spread {min(ratios):.2f}-{max(ratios):.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=400, help="posts of 100 events per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--identifies",
        type=int,
        default=10,
        choices=(0, 1, 2, 5, 10, 20, 25, 50),
        help="identify events per 100 (the intake writes each to the identity memory)",
    )
    parser.add_argument("--baseline", type=Path, help="another checkout to run the same serve command from")
    parser.add_argument("--sqlite-append", action="store_true", help="the embedded queue's write, in process")
    args = parser.parse_args()
    if args.sqlite_append:
        sqlite_append(args.batches, args.repeat)
        return
    kinds = ["engine", "floor"] + (["baseline"] if args.baseline else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "outreach.yaml").write_text(
            "client_id: bench\nclient_secret: bench-secret\n"
            "refresh_token: bench-refresh\nbase_url: http://127.0.0.1:9\n",
            encoding="utf-8",
        )
        redis, url = redis_server(work)
        try:
            runs: dict[str, list[float]] = {k: [] for k in kinds}
            for rep in range(args.repeat):
                for kind in kinds:
                    runs[kind].append(
                        one(kind, work, url, args.batches, f"{kind}{rep}", args.baseline, args.identifies)
                    )
                print("  " + "  ".join(f"{k} {runs[k][-1]:.1f} µs" for k in kinds), file=sys.stderr)
        finally:
            redis.kill()
            redis.wait()
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"intake, CPU per event in batches of {BATCH} ({args.batches * BATCH} events, {args.identifies} "
        f"identifies in 100, {args.repeat} runs):"
    )
    print(f"  engine   {med['engine']:.1f} µs ({1e6 / med['engine']:,.0f} events per CPU second)")
    print(f"  floor    {med['floor']:.1f} µs")
    ratios = [e / f for e, f in zip(runs["engine"], runs["floor"], strict=True)]
    print(f"  engine/floor {statistics.median(ratios):.2f}x (spread {min(ratios):.2f}-{max(ratios):.2f}x)")
    if args.baseline:
        before = [b / e for b, e in zip(runs["baseline"], runs["engine"], strict=True)]
        print(
            f"  baseline {med['baseline']:.1f} µs: baseline/engine {statistics.median(before):.2f}x "
            f"(spread {min(before):.2f}-{max(before):.2f}x)"
        )


if __name__ == "__main__":
    main()
