"""``signal-engine run``: an event stream through a preset, dry or delivering."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, AsyncIterator, Callable, Iterable

from .. import outcome as oc
from ..language.compiler import load_preset
from ..language.model import Preset
from ..language.settings import Settings
from ..outcome import INVALID_EVENT, Outcome, dropped
from ..pipeline.prepare import Pipeline
from .common import check_state_dir, emit, settings_for
from .events_input import events_from, open_events
from .input_hints import FirstLine, watch_first
from .logs import add_logging_options, json_line
from .report import RunReport, wants_progress


def register(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="run an event stream through a preset",
        description="Run newline-delimited JSON events through a preset: one outcome line per event on stdout, "
                    "progress and a summary on stderr. Exit status: 0 when every event was delivered, dropped or "
                    "would_send; 1 when any failed or was dead-lettered; 2 for a usage or configuration error.")
    run.add_argument("preset", metavar="PRESET", help="built-in name (destination/preset) or path to a YAML preset")
    run.add_argument("--events", required=True, metavar="FILE|-", help="newline-delimited JSON events; - reads stdin")
    run.add_argument("--settings", metavar="FILE", help="YAML mapping of setting values; ${ENV_VAR} is expanded")
    run.add_argument("--dry-run", action="store_true",
                     help="build and print each request without sending it (needs no credentials)")
    run.add_argument("--state", metavar="DIR", default=".signal-state",
                     help="token store, dead letters and identity memory (default: %(default)s)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="show progress on stderr (default: only when stderr is a terminal)")
    add_logging_options(run)
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    settings = settings_for(args, preset.settings, require=not args.dry_run,
                            without_file_hint="pass --settings FILE (or use --dry-run, which needs no credentials)")
    stream = FirstLine(open_events(args.events))  # before anything is sent: a bad path is one line and exit 2
    report = RunReport(progress=wants_progress(args.progress), source=f"--events {args.events}",
                       log_format=args.log_format)

    def warn(line: str) -> None:
        if args.log_format == "json":
            line = json_line("warning", line.removeprefix("signal-engine: "), event="hint")
        print(line, file=sys.stderr, flush=True)

    try:
        events = watch_first(events_from(stream, args.events), stream, args.events, warn)
        if args.dry_run:
            pipeline = Pipeline(preset, settings)
            for index, event, problem in events:
                result = dropped(index, None, INVALID_EVENT, problem) if problem is not None \
                    else pipeline.dry_run(event, index)
                emit(result)
                report.add(result)
            report.finish()
            return report.exit_code()
        return run_delivery(preset, settings, args, events, emit, report)
    finally:
        if args.events != "-":
            stream.close()


def run_delivery(preset: Preset, settings: Settings, args: argparse.Namespace,
                 items: Iterable[tuple[int, Any, str | None]], emit: Callable[[Outcome], None],
                 report: RunReport) -> int:
    check_state_dir(args.state)

    async def main() -> int:
        from ..runtime import Engine  # aiohttp machinery only when delivering
        from .logs import configure_logging

        async with Engine(preset, settings, state=args.state) as engine:
            configure_logging(engine.redactor, args.verbose, args.log_format)

            async def stream() -> AsyncIterator[tuple[int, Any]]:
                # Lines are read in a worker thread: a live pipe (--events -)
                # must not stall deliveries already under way.
                loop = asyncio.get_running_loop()
                source = iter(items)
                while (item := await loop.run_in_executor(None, next, source, None)) is not None:
                    index, event, problem = item
                    yield index, (dropped(index, None, oc.INVALID_EVENT, problem) if problem else event)

            async for result in engine.process_indexed(stream()):
                emit(result)
                report.add(result)
            mints = engine.mints
        report.finish(f"{mints} access token(s) minted")
        return report.exit_code()

    return asyncio.run(main())
