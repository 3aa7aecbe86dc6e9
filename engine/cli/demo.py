"""``signal-engine demo``: the example events delivered for real, to a sandbox served in this process.

The first thing a new user runs, so it needs nothing: no credentials, no
network beyond loopback, no second terminal, no checkout (the events ship
inside the package). It is ``run`` with the set-up done for the user: the
sandbox is started on a free loopback port, settings that reach it are
written into the state directory, and the events go through the real
engine (token mint, create, a repeated lead merged by the upsert, drops
with their reasons). stdout is exactly ``run``'s outcome lines; stderr
says where things are, then ``run``'s summary, then what the sandbox holds.

Which sandbox and preset are the sandbox package's business
(``engine.sandbox.DEMO``): this module names no destination.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from .. import outcome as oc
from ..event_loop import run_fast
from ..outcome import Outcome
from .common import UsageError, check_state_dir, load_preset_arg, settings_for
from .events_input import DEFAULT_MAX_EVENT_BYTES, open_events
from .logs import add_logging_options, say_on_stderr
from .report import RunReport, wants_progress
from .stopping import DEFAULT_GRACE_SECONDS, RunStop

# Shipped inside the package (engine/examples/), so that an installed engine
# has them too: the repository's examples/lead-capture.ndjson, line for line,
# then one lead who comes back with the same email in other letters.
DEMO_EVENTS = Path(__file__).resolve().parents[1] / "examples" / "demo-events.ndjson"
SETTINGS_FILE = "demo-settings.yaml"


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="deliver the example events to a local sandbox, for real",
        description="Start a local imitation of the destination API on a free loopback port, write settings that "
        "reach it into the state directory, and deliver the example events through the engine, for "
        "real: an access token minted, leads created, a repeated lead merged into the record it "
        "matches, the rest dropped with their reasons. stdout has one outcome line per event, as "
        "`run` prints them; stderr a summary and what the sandbox holds afterwards. Nothing leaves "
        "the machine and no credential is needed. Exit status as for `run`.",
    )
    demo.add_argument(
        "--state",
        metavar="DIR",
        help="state directory, kept afterwards with the settings written for the sandbox "
        f"({SETTINGS_FILE}) (default: a fresh temporary directory, removed at the end)",
    )
    demo.add_argument(
        "--events",
        metavar="FILE|-",
        help="newline-delimited JSON events; - reads stdin (default: the example events shipped "
        "with the engine, one lead among them sent twice)",
    )
    demo.add_argument(
        "--keep-serving",
        action="store_true",
        help="after the run, keep the sandbox up and serve the web console over the demo's state (on "
        "127.0.0.1, a free port), printing both URLs, until Ctrl-C (SIGINT) or SIGTERM",
    )
    demo.add_argument("--quiet", action="store_true", help="do not print outcome lines on stdout")
    add_logging_options(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    events = args.events or str(DEMO_EVENTS)
    raw = open_events(events)  # a bad path is one line and exit 2, before a port is bound
    state = args.state or tempfile.mkdtemp(prefix="signal-engine-demo-")
    try:
        check_state_dir(state)
        return run_fast(_demo(args, events, raw, state))
    finally:
        if events != "-":
            raw.close()
        if not args.state:  # it holds the sandbox's rotated refresh token: do not leave it behind
            shutil.rmtree(state, ignore_errors=True)


async def _demo(args: argparse.Namespace, events: str, raw: Any, state: str) -> int:
    from .. import sandbox as sandbox_package
    from ..sandbox.common import start_app
    from .run import InputLines, deliver

    show = importlib.import_module(f"{sandbox_package.__name__}.{sandbox_package.DEMO}").demo()
    preset = load_preset_arg(args, show.preset)
    runner, url = await start_app(show.app)  # port 0: a free loopback port
    try:
        settings_path = _write_settings(Path(state), show.settings(url))
        settings = settings_for(argparse.Namespace(settings=str(settings_path)), preset.settings, require=True)
        _say(
            args,
            f"signal-engine: demo: delivering {events} through {show.preset} to the sandbox at {url} "
            f"(state and settings: {state})",
            event="demo_start",
            sandbox=url,
            preset=show.preset,
            events_file=events,
            state=state,
        )

        def warn(line: str) -> None:
            _say(args, line, level="warning", event="hint")

        report = _DemoReport(progress=wants_progress(None), source=f"--events {events}", log_format=args.log_format)
        lines = InputLines(events, DEFAULT_MAX_EVENT_BYTES, warn)
        stop = RunStop()
        run_args = argparse.Namespace(
            state=state,
            events=events,
            grace=DEFAULT_GRACE_SECONDS,
            verbose=args.verbose,
            log_format=args.log_format,
            record=True,
        )
        code = await deliver(preset, settings, run_args, raw, lines, report, stop, print_outcomes=not args.quiet)

        if report.not_resent:
            _say(
                args,
                f"signal-engine: demo: {report.not_resent} event(s) were not sent again: the delivery journal "
                f"in {state} records them as delivered by an earlier demo (without --state, or with a new "
                "directory, they are delivered afresh)",
                level="warning",
                event="demo_journal",
                not_resent=report.not_resent,
            )
        held = show.holdings()
        _say(
            args,
            f"signal-engine: demo: the sandbox holds {held[0]}",
            event="demo_sandbox",
            sandbox=url,
            **show.counts(),
            records=held[1:],
        )
        if args.log_format != "json":
            for line in held[1:]:
                _say(args, f"  {line}")
        if args.keep_serving and not stop.stopped:
            await _serve_until_stopped(args, url, state, preset, settings)
        return code
    finally:
        await runner.cleanup()


class _DemoReport(RunReport):
    """``run``'s report, also counting deliveries the journal answered (a reused ``--state``).

    Those reached no sandbox: a demo that seemed to deliver while the sandbox
    holds nothing must say why.
    """

    not_resent = 0

    def add(self, result: Outcome) -> None:
        super().add(result)
        if result.outcome == oc.DELIVERED and result.attempts == 0:
            self.not_resent += 1


def served(sandbox_url: str, console_url: str | None = None) -> dict[str, str]:
    """What ``--keep-serving`` keeps up, by name, in the order it is printed.

    The one place to add what else a person can open while the demo serves.
    The console comes first: it is what a new user should open (the Event
    Debugger with the demo's events).
    """
    console = {"console": f"{console_url}/console/"} if console_url else {}
    return {**console, "sandbox": sandbox_url, "sandbox state": f"{sandbox_url}/_sandbox/state"}


async def _start_console(state: str, preset: Any, settings: Any) -> tuple[Any, Any, str]:
    """The web console over the demo's state, on a free loopback port (loopback only: it shows personal data).

    It is given the demo's preset and sandbox settings, so a dead letter can
    be replayed from the page as after a real run.
    """
    from aiohttp import web

    from ..console import Connection, ConsoleSource, Guard, create_console_app, standalone
    from ..service.intake import RUNNER_OPTIONS
    from ..service.serving import url_of
    from ..state.sqlite import SqliteState

    backend = SqliteState(state)
    try:
        source = ConsoleSource(backend, [Connection(preset, settings)])
        runner = web.AppRunner(
            standalone(create_console_app(source, Guard(None))), access_log=None, handle_signals=False, **RUNNER_OPTIONS
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
    except BaseException:
        backend.close()
        raise
    return runner, backend, url_of("127.0.0.1", int(runner.addresses[0][1]))


async def _serve_until_stopped(
    args: argparse.Namespace, sandbox_url: str, state: str | None = None, preset: Any = None, settings: Any = None
) -> None:
    """Print what is served, then wait for SIGINT or SIGTERM: the expected end of the demo, so exit 0."""
    console = await _start_console(state, preset, settings) if state is not None else None
    try:
        await _wait_for_signal(args, served(sandbox_url, console[2] if console else None))
    finally:
        if console is not None:
            await console[0].cleanup()
            console[1].close()


async def _wait_for_signal(args: argparse.Namespace, urls: dict[str, str]) -> None:
    if args.log_format == "json":
        _say(args, "signal-engine: demo: serving until Ctrl-C", event="demo_serving", urls=urls)
    else:
        for name, url in urls.items():
            _say(args, f"signal-engine: demo: {name}: {url}")
        _say(args, "signal-engine: demo: serving until Ctrl-C (SIGINT) or SIGTERM")
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    _say(args, "signal-engine: demo: stopped serving", event="demo_stopped")


def _write_settings(state: Path, values: dict[str, str]) -> Path:
    """The sandbox's settings as a YAML file only its owner can read (it holds the client secret)."""
    path = state / SETTINGS_FILE
    text = "# Settings for the sandbox of `signal-engine demo`; they stop working when it stops.\n"
    text += "".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items())  # JSON strings are YAML
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(path, 0o600)  # an older file of the same name may have had wider permissions
    except OSError as exc:
        raise UsageError(f"--state {state}: cannot write {SETTINGS_FILE} ({exc.strerror or exc})") from None
    return path


def _say(args: argparse.Namespace, line: str, level: str = "info", **fields: Any) -> None:
    say_on_stderr(args.log_format, line, level, **fields)
