"""``signal-engine run``: an event stream through a preset, dry or delivering."""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any, AsyncIterator, Callable

from .. import outcome as oc
from ..language.model import Preset
from ..language.settings import Settings
from ..outcome import INVALID_EVENT, Outcome, dropped
from ..pipeline.prepare import Pipeline
from .common import (
    UsageError,
    add_preset_path_option,
    check_state_dir,
    emit,
    load_preset_arg,
    settings_for,
)
from .events_input import (
    events_from,
    is_regular_file,
    open_events,
    parse_line,
    raw_line_chunks,
)
from .input_hints import FirstLine, ndjson_hint, watch_first
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
    add_preset_path_option(run)
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    preset = load_preset_arg(args)
    settings = settings_for(args, preset.settings, require=not args.dry_run,
                            without_file_hint="pass --settings FILE (or use --dry-run, which needs no credentials)")
    raw = open_events(args.events)  # before anything is sent: a bad path is one line and exit 2
    report = RunReport(progress=wants_progress(args.progress), source=f"--events {args.events}",
                       log_format=args.log_format)

    def warn(line: str) -> None:
        if args.log_format == "json":
            line = json_line("warning", line.removeprefix("signal-engine: "), event="hint")
        print(line, file=sys.stderr, flush=True)

    try:
        if args.dry_run:
            stream = FirstLine(raw)
            pipeline = Pipeline(preset, settings)
            flush = not is_regular_file(raw)  # a pipe or a terminal is watched line by line
            for index, event, problem in watch_first(events_from(stream, args.events), stream, args.events, warn):
                result = dropped(index, None, INVALID_EVENT, problem) if problem is not None \
                    else pipeline.dry_run(event, index)
                emit(result, flush=flush)
                report.add(result)
            sys.stdout.flush()
            report.finish()
            return report.exit_code()
        return run_delivery(preset, settings, args, raw, emit, report, warn)
    finally:
        if args.events != "-":
            raw.close()


def run_delivery(preset: Preset, settings: Settings, args: argparse.Namespace,
                 stream: IO[Any], emit: Callable[[Outcome], None], report: RunReport,
                 warn: Callable[[str], None]) -> int:
    import asyncio  # not at module level: a dry run needs no event loop

    from .input_batches import batches

    check_state_dir(args.state)

    async def main() -> int:
        from ..runtime import Engine  # aiohttp machinery only when delivering
        from .logs import configure_logging

        async with Engine(preset, settings, state=args.state) as engine:
            configure_logging(engine.redactor, args.verbose, args.log_format)

            async def events() -> AsyncIterator[list[tuple[int, Any]]]:
                # Lines are read in a thread of their own (a live pipe must not stall
                # deliveries under way), handed over in batches, and parsed here.
                index = 0
                hinted = False
                try:
                    async for lines in batches(raw_line_chunks(stream)):
                        batch = []
                        for raw in lines:
                            item = parse_line(index, raw)
                            index += 1
                            if item is None:
                                continue
                            at, event, problem = item
                            if not hinted:
                                hinted = True
                                hint = ndjson_hint(args.events, raw.removeprefix(b"\xef\xbb\xbf").strip(), event, problem)
                                if hint:
                                    warn(hint)
                            batch.append((at, dropped(at, None, oc.INVALID_EVENT, problem) if problem else event))
                        yield batch
                except OSError as exc:
                    raise UsageError(f"--events {args.events}: cannot read: {exc.strerror or exc}") from None

            async for result in engine.process_batches(events()):
                emit(result)
                report.add(result)
            mints = engine.mints
        report.finish(f"{mints} access token(s) minted")
        return report.exit_code()

    return asyncio.run(main())
