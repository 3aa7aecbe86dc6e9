"""``signal-engine console``: the web console over a state directory or a Redis, on its own port."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .common import UsageError, add_preset_path_option, load_preset_arg, settings_for
from .logs import add_logging_options
from .report import EXIT_OK

DEFAULT = " (default: %(default)s)"


def register(sub: Any) -> None:
    cmd = sub.add_parser(
        "console", help="serve the web console: Event Debugger, dead letters, integration health",
        description="Serve the web console over what a `run`, a `dlq replay`, `serve` or the workers recorded in a "
                    "state directory (--state) or a Redis (--redis). It listens on 127.0.0.1 by default; any other "
                    "--host needs the token in $SIGNAL_CONSOLE_TOKEN, or it refuses to start. Prints 'console on "
                    "http://HOST:PORT/console/' when ready; SIGINT or SIGTERM stops it.")
    where = cmd.add_mutually_exclusive_group(required=True)
    where.add_argument("--state", metavar="DIR", help="the state directory a run, dlq replay or serve used")
    where.add_argument("--redis", metavar="URL", help="the Redis the workers use")
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on" + DEFAULT)
    cmd.add_argument("--port", type=int, default=8090, help="port to listen on; 0 picks a free one" + DEFAULT)
    cmd.add_argument("--preset", metavar="PRESET",
                     help="a preset whose dead letters the console may replay (needs --settings)")
    cmd.add_argument("--settings", metavar="FILE", help="the settings (credentials) of --preset, for replays")
    add_logging_options(cmd)
    add_preset_path_option(cmd)
    cmd.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from ..console import TOKEN_ENV, ExposureRefused, check_exposure
    from .service_common import configure_for, service_errors

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be from 0 to 65535")
    token = os.environ.get(TOKEN_ENV) or None
    try:
        check_exposure(args.host, token)
    except ExposureRefused as exc:
        raise UsageError(f"--host {args.host}: {exc}") from None
    if args.settings and not args.preset:
        raise UsageError("--settings needs --preset (the preset whose letters they replay)")
    connections = []
    if args.preset:
        from ..console import Connection

        preset = load_preset_arg(args)
        settings = settings_for(args, preset.settings, require=True)
        connections.append(Connection(preset, settings))
    if args.state is not None and not (Path(args.state) / "state.db").is_file():
        raise UsageError(f"--state {args.state}: no state database there (state.db); pass the --state DIR that "
                         "run or serve used")
    with service_errors(args):
        asyncio.run(serve_console(args, token, connections, configure_for(args)))
    return EXIT_OK


async def serve_console(args: argparse.Namespace, token: str | None, connections: list[Any], configure: Any) -> None:
    import asyncio
    import signal

    from aiohttp import web

    from ..console import ConsoleSource, Guard, create_console_app, standalone
    from ..service.intake import RUNNER_OPTIONS
    from ..service.serving import url_of

    if args.redis:
        from ..state.redis import RedisState

        backend: Any = RedisState(args.redis)
        try:
            backend.check()
        except OSError as exc:
            backend.close()
            raise UsageError(exc.strerror or str(exc)) from None
    else:
        from ..state.sqlite import SqliteState

        backend = SqliteState(args.state)
    try:
        source = ConsoleSource(backend, connections)
        configure(source.redactor)
        app = standalone(create_console_app(source, Guard(token)))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, **RUNNER_OPTIONS)
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            site = web.TCPSite(runner, args.host, args.port)
            await site.start()
            port = int(runner.addresses[0][1])
            print(f"console on {url_of(args.host, port)}/console/", flush=True)
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await runner.cleanup()
    finally:
        backend.close()
        sys.stdout.flush()


def _has_credentials(integration: Any) -> bool:
    specs = integration.preset.settings
    return all(integration.settings[name] is not None or spec.stored
               for name, spec in specs.items() if spec.secret and spec.required)


def console_mount(args: argparse.Namespace, config: Any) -> Any:
    """The console, mounted under /console on the intake's app, over the same state (see engine/console/).

    ``config`` is the integrations the service runs (an
    :class:`~engine.service.integrations.IntegrationsConfig`): each one the
    console may replay letters through, under its name.
    """
    from ..console import TOKEN_ENV, Connection, ConsoleSource, ExposureRefused, Guard, check_exposure
    from ..console import create_console_app, mount

    token = os.environ.get(TOKEN_ENV) or None
    try:
        check_exposure(args.host, token)
    except ExposureRefused as exc:
        raise UsageError(f"--console --host {args.host}: {exc}") from None
    # With --redis the intake may have no credentials (they are not required there): only integrations whose
    # secrets are all set can replay.
    connections = [Connection(i.preset, i.settings, i.name) for i in config.integrations
                   if args.redis is None or _has_credentials(i)]

    def add(app: Any) -> None:
        if args.redis:
            from ..state.redis import RedisState

            backend: Any = RedisState(args.redis)
        else:
            from ..state.sqlite import SqliteState

            backend = SqliteState(args.state)

        async def close(_: Any) -> None:
            backend.close()

        mount(app, create_console_app(ConsoleSource(backend, connections), Guard(token)))
        app.on_cleanup.append(close)

    return add
