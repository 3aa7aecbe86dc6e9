#!/usr/bin/env python3
"""A host application embedding the engine: an asyncio queue consumer.

This is the host the engine is made to be embedded in: a service that already has an event
loop and a stream of events (a broker, a webhook gateway) and wants each
event turned into an Outreach prospect without running a separate process.

    python examples/embed_host.py --sandbox
        Self-contained demo: serves a local Outreach sandbox in this process
        and feeds it examples/lead-capture.ndjson.

    python examples/embed_host.py --settings FILE --events FILE [--state DIR]
        The same host against whatever the settings point at.

Each outcome is printed as one JSON line on stdout as soon as it is known;
a summary goes to stderr. The exit status is 1 if any event failed or was
dead-lettered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from engine.language.settings import load_settings_file
from engine.outcome import Outcome
from engine.runtime import Engine

EXAMPLE_EVENTS = Path(__file__).resolve().parent / "lead-capture.ndjson"
END = object()  # end-of-stream marker; a real consumer would run forever


async def produce(path: Path, queue: asyncio.Queue[Any]) -> None:
    """Stand in for the broker: put each JSON line on the queue.

    The queue is bounded, so a slow destination slows the producer down
    instead of piling events up in memory.
    """
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                # A line that is not JSON is passed on as text: the engine gives
                # it an ``invalid_event`` outcome instead of stopping the stream.
                try:
                    await queue.put(json.loads(line))
                except ValueError:
                    await queue.put(line)
    await queue.put(END)


async def consume(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """The queue as an async iterator, which is what ``process_many`` reads."""
    while (event := await queue.get()) is not END:
        yield event


def print_outcome(outcome: Outcome) -> None:
    """``on_outcome`` callback: called once per event, the moment its fate is known.

    This is where a host would count metrics or raise an alert; it runs on
    the event loop, so it must not block.
    """
    print(json.dumps(outcome.to_dict(), ensure_ascii=False), flush=True)


async def run_host(settings: dict[str, Any], events: Path, state: str, concurrency: int) -> Counter[str]:
    """Feed the queue through one engine; return the outcome counts.

    ``process_many`` filters and transforms in arrival order (identify must be
    seen before the track it enriches), delivers up to ``concurrency`` events
    at once, and yields outcomes in input order: the point up to which a
    consumer may acknowledge (commit offsets on) its broker. Leaving the
    ``async with`` block closes the engine, which first drains deliveries
    still in flight, so nothing is cut off on shutdown.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=100)
    producer = asyncio.create_task(produce(events, queue))
    counts: Counter[str] = Counter()
    async with Engine.from_preset(
        "outreach/lead-capture", settings, state=state, on_outcome=print_outcome, concurrency=concurrency
    ) as engine:
        async for outcome in engine.process_many(consume(queue)):
            counts[outcome.outcome] += 1  # in input order: acknowledge up to here
        mints = engine.mints
    await producer
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    print(f"embed_host: {summary}; {mints} access token(s) minted", file=sys.stderr)
    return counts


async def sandbox_demo(concurrency: int) -> Counter[str]:
    """Serve the Outreach sandbox on a free loopback port and run the example stream against it.

    The state directory (token store, dead letters, identity memory) is
    temporary, so every demo run starts from the sandbox's initial refresh token.
    """
    from engine.sandbox.outreach import SandboxConfig, start_sandbox  # only the demo needs it

    config = SandboxConfig()
    runner, base_url = await start_sandbox(config, port=0)
    settings = {
        "client_id": config.client_id,
        "client_secret": config.client_secret,
        "refresh_token": config.refresh_token,
        "base_url": base_url,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="embed-host-") as state:
            return await run_host(settings, EXAMPLE_EVENTS, state, concurrency)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sandbox", action="store_true", help="demo against an in-process Outreach sandbox")
    parser.add_argument("--settings", type=Path, help="YAML settings (client_id, client_secret, refresh_token, ...)")
    parser.add_argument("--events", type=Path, help="newline-delimited JSON events")
    parser.add_argument("--state", default=".signal-state", help="state directory (default ./.signal-state)")
    parser.add_argument("--concurrency", type=int, default=4, help="deliveries in flight at once")
    args = parser.parse_args(argv)
    if args.sandbox:
        counts = asyncio.run(sandbox_demo(args.concurrency))
    elif args.settings and args.events:
        settings, _where = load_settings_file(args.settings)
        counts = asyncio.run(run_host(settings, args.events, args.state, args.concurrency))
    else:
        parser.error("use --sandbox, or both --settings and --events")
    return 1 if counts["failed"] or counts["dead_lettered"] else 0


if __name__ == "__main__":
    sys.exit(main())
