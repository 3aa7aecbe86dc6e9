"""``signal-engine run``: an event stream through a preset, dry or delivering."""

from __future__ import annotations

import argparse
import sys
from typing import Any, AsyncIterator, Callable, Iterable

from .. import outcome as oc
from ..language.compiler import load_preset
from ..language.model import Preset
from ..language.settings import Settings
from ..outcome import INVALID_EVENT, Outcome, dropped
from ..pipeline.prepare import Pipeline
from .common import check_state_dir, emit, settings_for
from .events_input import events_from, is_regular_file, open_events


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run an event stream through a preset")
    run.add_argument("preset", metavar="PRESET", help="built-in name (destination/preset) or path to a YAML preset")
    run.add_argument("--events", required=True, metavar="FILE|-", help="newline-delimited JSON events; - reads stdin")
    run.add_argument("--settings", metavar="FILE", help="YAML mapping of setting values; ${ENV_VAR} is expanded")
    run.add_argument("--dry-run", action="store_true", help="build and print each request without sending it")
    run.add_argument("--state", metavar="DIR", default=".signal-state",
                     help="token store, dead letters and identity memory (default ./.signal-state)")
    run.add_argument("--verbose", action="store_true", help="log every delivery attempt to stderr")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    settings = settings_for(args, preset.settings, require=not args.dry_run)
    stream = open_events(args.events)  # before anything is sent: a bad path is one line and exit 2
    try:
        events = events_from(stream, args.events)
        if args.dry_run:
            pipeline = Pipeline(preset, settings)
            flush = not is_regular_file(stream)  # a pipe or a terminal is watched line by line
            for index, event, problem in events:
                if problem is not None:
                    emit(dropped(index, None, INVALID_EVENT, problem), flush=flush)
                else:
                    emit(pipeline.dry_run(event, index), flush=flush)
            sys.stdout.flush()
            return 0
        return run_delivery(preset, settings, args, events, emit)
    finally:
        if args.events != "-":
            stream.close()


def run_delivery(preset: Preset, settings: Settings, args: argparse.Namespace,
                 items: Iterable[tuple[int, Any, str | None]], emit: Callable[[Outcome], None]) -> int:
    import asyncio  # not at module level: a dry run needs no event loop

    check_state_dir(args.state)

    async def main() -> int:
        counts: dict[str, int] = {}
        from ..runtime import Engine  # aiohttp machinery only when delivering
        from .logs import configure_logging

        async with Engine(preset, settings, state=args.state) as engine:
            configure_logging(engine.redactor, args.verbose)

            async def stream() -> AsyncIterator[tuple[int, Any]]:
                # Lines are read in a worker thread: a live pipe (--events -)
                # must not stall deliveries already under way.
                loop = asyncio.get_running_loop()
                source = iter(items)
                while (item := await loop.run_in_executor(None, next, source, None)) is not None:
                    index, event, problem = item
                    yield index, (dropped(index, None, oc.INVALID_EVENT, problem) if problem else event)

            async for result in engine.process_indexed(stream()):
                counts[result.outcome] = counts.get(result.outcome, 0) + 1
                emit(result)
            mints = engine.mints
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no events"
        print(f"signal-engine: {summary}; {mints} access token(s) minted", file=sys.stderr)
        return 1 if counts.get(oc.FAILED) or counts.get(oc.DEAD_LETTERED) else 0

    return asyncio.run(main())
