"""``signal-engine run``: an event stream through a preset, dry or delivering."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, Any

from .. import outcome as oc
from ..event_loop import run_fast
from ..language.model import Preset
from ..language.settings import Settings
from ..outcome import INVALID_EVENT, dropped
from ..pipeline.prepare import Pipeline
from .common import (
    UsageError,
    add_preset_path_option,
    add_reset_state_option,
    check_state_dir,
    emit,
    load_preset_arg,
    settings_for,
)
from .events_input import (
    DEFAULT_MAX_EVENT_BYTES,
    RawLine,
    is_regular_file,
    open_events,
    parse_line,
    raw_line_chunks,
)
from .input_hints import ndjson_hint
from .logs import add_logging_options, json_line
from .record_options import add_record_options, record_choice
from .report import RunReport, wants_progress
from .stopping import DEFAULT_GRACE_SECONDS, SIGNALS, RunStop, StopRequested, seconds_arg, signal_name, stop_line


def register(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run an event stream through a preset",
        description="Run newline-delimited JSON events through a preset: one outcome line per event on stdout, "
        "progress and a summary on stderr. SIGINT, SIGTERM or a closed stdout stop the run: no more "
        "input is read, requests on the wire get --grace seconds, and every event read still gets its "
        "outcome. Exit status: 0 when every event was delivered, dropped or would_send; 1 when any "
        "failed or was dead-lettered; 2 for a usage or configuration error; 130 (SIGINT), 143 "
        "(SIGTERM) or 141 (stdout closed) for a run stopped early.",
    )
    run.add_argument("preset", metavar="PRESET", help="built-in name (destination/preset) or path to a YAML preset")
    run.add_argument("--events", required=True, metavar="FILE|-", help="newline-delimited JSON events; - reads stdin")
    run.add_argument("--settings", metavar="FILE", help="YAML mapping of setting values; ${ENV_VAR} is expanded")
    run.add_argument(
        "--dry-run", action="store_true", help="build and print each request without sending it (needs no credentials)"
    )
    run.add_argument(
        "--state",
        metavar="DIR",
        default=".signal-state",
        help="token store, dead letters and identity memory (default: %(default)s)",
    )
    add_reset_state_option(run)
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: only when stderr is a terminal)",
    )
    run.add_argument(
        "--grace",
        type=seconds_arg,
        default=DEFAULT_GRACE_SECONDS,
        metavar="SECONDS",
        help="after SIGINT, SIGTERM or a closed stdout, how long requests already sent may take to "
        "finish before they are dead-lettered as interrupted (default: %(default)g)",
    )
    run.add_argument(
        "--max-event-bytes",
        type=_byte_count,
        default=DEFAULT_MAX_EVENT_BYTES,
        metavar="BYTES",
        help="a longer input line is not read: it is one invalid_event (default: %(default)d)",
    )
    add_record_options(run)
    add_logging_options(run)
    add_preset_path_option(run)
    run.set_defaults(func=cmd_run)


def _byte_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of bytes, 1 or more, got {text!r}")
    return int(text)


# Allocations between young-generation collections while delivering (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


class InputLines:
    """Numbers and parses the lines of ``--events``; ``read`` counts every line taken, blank ones too."""

    def __init__(self, source: str, max_bytes: int, warn: Callable[[str], None]) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.warn = warn
        self.read = 0
        self.finished = False  # the input ended (rather than the run stopping first)
        self._hinted = False

    def parse(self, lines: list[RawLine]) -> Iterator[tuple[int, Any, str | None]]:
        for raw in lines:
            index = self.read
            item = parse_line(index, raw, self.max_bytes)
            self.read += 1
            if item is None:
                continue
            if not self._hinted:
                self._hinted = True
                first = raw.removeprefix(b"\xef\xbb\xbf").strip() if isinstance(raw, bytes) else None
                hint = ndjson_hint(self.source, first, item[1], item[2])
                if hint:
                    self.warn(hint)
            yield item

    def where(self, stop: RunStop, *, delivering: bool) -> str:
        if self.finished:
            return f"{stop.cause()} after reading all {self.read:,} line(s) of --events {self.source}"
        return stop_line(stop, self.read, f"--events {self.source}", delivering=delivering)


def cmd_run(args: argparse.Namespace) -> int:
    args.record = record_choice(args)  # False, True or the bounds given: a contradiction is one line, before all
    preset = load_preset_arg(args)
    settings = settings_for(
        args,
        preset.settings,
        require=not args.dry_run,
        without_file_hint="pass --settings FILE (or use --dry-run, which needs no credentials)",
    )
    raw = open_events(args.events)  # before anything is sent: a bad path is one line and exit 2
    report = RunReport(
        progress=wants_progress(args.progress), source=f"--events {args.events}", log_format=args.log_format
    )

    def warn(line: str) -> None:
        _tell(args.log_format, line, "hint")

    lines = InputLines(args.events, args.max_event_bytes, warn)
    stop = RunStop()
    try:
        if args.dry_run:
            return dry_run(Pipeline(preset, settings), raw, lines, report, stop)
        return run_delivery(preset, settings, args, raw, lines, report, stop)
    finally:
        if args.events != "-":
            raw.close()


def dry_run(pipeline: Pipeline, stream: IO[Any], lines: InputLines, report: RunReport, stop: RunStop) -> int:
    """No event loop: a signal ends the run after the lines already read have their outcomes."""
    flush = not is_regular_file(stream)  # a pipe or a terminal is watched line by line
    with stop.signals_handled():
        chunks = raw_line_chunks(stream, max_bytes=lines.max_bytes)
        try:
            while not stop.stopped:
                try:
                    with stop.reading():
                        chunk = next(chunks, None)
                except StopRequested:
                    break
                if chunk is None:
                    lines.finished = True
                    break
                for index, event, problem in lines.parse(chunk):
                    result = (
                        dropped(index, None, INVALID_EVENT, problem)
                        if problem is not None
                        else pipeline.dry_run(event, index)
                    )
                    stop.emit(lambda: emit(result, flush=flush))  # noqa: B023 - emit calls it at once
                    report.add(result)
            stop.emit(sys.stdout.flush, lines=0)
        except OSError as exc:
            raise UsageError(f"--events {lines.source}: cannot read: {exc.strerror or exc}") from None
    return _finish(report, lines, stop, delivering=False)


def _finish(report: RunReport, lines: InputLines, stop: RunStop, extra: str | None = None, *, delivering: bool) -> int:
    if stop.stopped:
        report.stopped = lines.where(stop, delivering=delivering)
        if not stop.printing:
            extra = ", ".join(filter(None, [extra, f"{report.total - stop.printed:,} outcome line(s) not printed"]))
    report.finish(extra)
    code = stop.exit_code()
    return code if code is not None else report.exit_code()


def run_delivery(
    preset: Preset,
    settings: Settings,
    args: argparse.Namespace,
    stream: IO[Any],
    lines: InputLines,
    report: RunReport,
    stop: RunStop,
) -> int:

    check_state_dir(args.state, reset=args.reset_state)
    return run_fast(deliver(preset, settings, args, stream, lines, report, stop))


async def deliver(
    preset: Preset,
    settings: Settings,
    args: argparse.Namespace,
    stream: IO[Any],
    lines: InputLines,
    report: RunReport,
    stop: RunStop,
    *,
    print_outcomes: bool = True,
) -> int:
    """Deliver ``stream`` in the running loop: one outcome line each, then the summary; returns the exit code.

    A coroutine, so that a caller can serve something of its own in the same
    loop (``demo`` serves the sandbox it delivers to). ``args`` gives
    ``state`` (checked already), ``events``, ``grace``, ``verbose`` and
    ``log_format``. SIGINT and SIGTERM stop the run while it lasts.
    """
    import asyncio
    import gc

    from ..runtime import Engine  # aiohttp machinery only when delivering
    from .input_batches import batches, file_batches
    from .log_handlers import configure_logging

    engine = Engine(preset, settings, state=args.state, record=args.record)

    def on_signal(signum: int) -> None:
        first = stop.on_signal(signum)
        wire = engine.in_flight()
        if first and wire and args.grace:
            note = f"{wire} request(s) on the wire get up to {args.grace:g}s to finish (send it again to stop now)"
        elif first:
            note = "nothing is on the wire"
        else:
            note = f"{wire} request(s) still on the wire are dead-lettered now"
        name = signal_name(signum) if first else f"{signal_name(signum)} again"
        _tell(args.log_format, f"signal-engine: {name}: stopping; no more input is read; {note}", "stopping")
        engine.stop(args.grace if first else 0, stop.reason or signal_name(signum))

    # Installed before the engine starts and kept until it has closed: a
    # signal while the engine writes its last state must not cut that short.
    loop = asyncio.get_running_loop()
    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with engine:
            configure_logging(engine.redactor, args.verbose, args.log_format)
            # What the start built (modules, the preset, the HTTP session) lives as long as the run:
            # set apart from the collector, a full collection no longer walks it again and again. And
            # a batch of input is thousands of young objects that live until their outcomes are printed:
            # collected every 700 allocations (the default), each pass walks them and promotes them.
            gc.freeze()
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

            async def events() -> AsyncIterator[list[tuple[int, Any]]]:
                # A pipe's lines are read in a thread of their own (a live pipe must not stall
                # deliveries under way), a file's on the loop; handed over in batches, and parsed here.
                read = file_batches if is_regular_file(stream) else batches
                try:
                    async for chunk in read(raw_line_chunks(stream, max_bytes=lines.max_bytes)):
                        yield [
                            (at, dropped(at, None, oc.INVALID_EVENT, problem) if problem else event)
                            for at, event, problem in lines.parse(chunk)
                        ]
                except OSError as exc:
                    raise UsageError(f"--events {args.events}: cannot read: {exc.strerror or exc}") from None
                lines.finished = True

            # Lines are flushed once the outcomes at hand are written (when the loop next waits),
            # not one write per line: a watcher still sees each at once, and a backlog of drops
            # costs no system call each. A line counts as printed once it is flushed.
            unflushed = 0

            def flush() -> None:
                nonlocal unflushed
                if unflushed:
                    count, unflushed = unflushed, 0
                    if stop.emit(sys.stdout.flush, lines=count):
                        engine.stop(args.grace, stop.reason or "stdout closed")

            async for ready in engine.process_batches_together(events()):
                for result in ready:
                    if print_outcomes:
                        if stop.emit(lambda: emit(result, flush=False), lines=0):  # noqa: B023 - emit calls it at once
                            engine.stop(args.grace, stop.reason or "stdout closed")
                        elif stop.printing:
                            if not unflushed:
                                loop.call_soon(flush)
                            unflushed += 1
                    report.add(result)
            flush()
        mints = engine.mints
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
    return _finish(report, lines, stop, f"{mints} access token(s) minted", delivering=True)


def _tell(log_format: str, line: str, event: str) -> None:
    """A warning on stderr at once, as a JSON log line under ``--log-format json``."""
    if log_format == "json":
        line = json_line("warning", line.removeprefix("signal-engine: "), event=event)
    print(line, file=sys.stderr, flush=True)
