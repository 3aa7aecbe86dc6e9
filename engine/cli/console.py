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
        "console",
        help="serve the web console: Event Debugger, dead letters, integration health",
        description="Serve the web console over what a `run`, a `dlq replay`, `serve` or the workers recorded in a "
        "state directory (--state) or a Redis (--redis). It listens on 127.0.0.1 by default; any other "
        "--host needs the token in $SIGNAL_CONSOLE_TOKEN, or it refuses to start. Prints 'console on "
        "http://HOST:PORT/console/' when ready; SIGINT or SIGTERM stops it.",
    )
    where = cmd.add_mutually_exclusive_group(required=True)
    where.add_argument("--state", metavar="DIR", help="the state directory a run, dlq replay or serve used")
    where.add_argument("--redis", metavar="URL", help="the Redis the workers use")
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on" + DEFAULT)
    cmd.add_argument("--port", type=int, default=8090, help="port to listen on; 0 picks a free one" + DEFAULT)
    cmd.add_argument(
        "--config",
        metavar="FILE",
        help="an integrations file: every integration of it is listed, with its records, dead letters, "
        "health and lag, and its letters are replayed with its own settings (its ${NAME}s are read "
        "from this environment)",
    )
    cmd.add_argument(
        "--preset", metavar="PRESET", help="a preset whose dead letters the console may replay (needs --settings)"
    )
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
    if args.config and args.preset:
        raise UsageError(
            "give --config FILE, or --preset PRESET --settings FILE, not both (the integrations file "
            "names each integration's preset and settings)"
        )
    connections: list[Any] = []
    configured: list[Any] = []
    if args.config:
        connections, configured = from_file(args.config, getattr(args, "preset_path", []) or [])
    elif args.preset:
        from ..console import Connection

        preset = load_preset_arg(args)
        settings = settings_for(args, preset.settings, require=True)
        connections.append(Connection(preset, settings))
    if args.state is not None and not (Path(args.state) / "state.db").is_file():
        raise UsageError(
            f"--state {args.state}: no state database there (state.db); pass the --state DIR that run or serve used"
        )
    with service_errors(args):
        asyncio.run(serve_console(args, token, connections, configure_for(args), configured))
    return EXIT_OK


async def serve_console(
    args: argparse.Namespace,
    token: str | None,
    connections: list[Any],
    configure: Any,
    configured: list[Any] | None = None,
) -> None:
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
        source = ConsoleSource(
            backend,
            connections,
            configured=configured or (),
            preset_path=[str(p) for p in getattr(args, "preset_path", []) or []],
        )
        source.lags = _lags(args, backend, [c.name for c in configured or ()], connections, source)
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
    return not _missing_credentials(integration)


def _missing_credentials(integration: Any) -> list[str]:
    specs = integration.preset.settings
    return [
        name
        for name, spec in specs.items()
        if spec.secret and spec.required and integration.settings[name] is None and not spec.stored
    ]


def from_file(path: str, preset_path: Any) -> tuple[list[Any], list[Any]]:
    """Every integration of an integrations file: a connection for each whose credentials are all set (so its
    letters replay with its own settings), and each listed, with why it cannot replay when it cannot.

    Listing needs no credential: an integration whose ``${NAME}`` is unset is still shown, with its records and
    letters; only its replay is refused, and the page says which variable is missing.
    """
    from ..console import Configured, Connection
    from ..service.integrations import IntegrationsError, load_integrations, read_integrations

    try:
        listed = read_integrations(path, os.environ, preset_path=preset_path)  # no credential, no intake key
    except IntegrationsError as exc:
        raise UsageError("\n".join(exc.problems)) from None
    connections, configured = [], []
    for item in listed:
        try:  # its own credentials, required: resolve() keeps no secret when they are not required
            full = load_integrations(path, os.environ, preset_path=preset_path, require={item.name}, intake=False).get(
                item.name
            )
            why = (
                None
                if _has_credentials(full)
                else (
                    f"its secret setting(s) {', '.join(_missing_credentials(full))} are not set (in {path}, or the "
                    "${NAME}s it names in the console's environment)"
                )
            )
        except IntegrationsError as exc:
            full, why = None, "; ".join(p.strip() for p in exc.problems if f"'{item.name}'" in p) or exc.problems[0]
        if full is not None and why is None:
            connections.append(Connection(full.preset, full.settings, full.name))
        configured.append(Configured(item.name, item.preset_ref or item.preset.name, path, item.enabled, why))
    return connections, configured


def _lags(args: argparse.Namespace, backend: Any, names: list[str], connections: list[Any], source: Any) -> Any:
    """How the console reads each integration's lag: the state directory's queue, or the Redis Stream's groups.

    An integrations file's intake writes one stream (``keys.events()``); a one-preset intake its preset's.
    """
    from ..console.lag import redis_lags, sqlite_lags

    if args.redis:
        preset = None if args.config or not connections else connections[0].preset.name
        return redis_lags(backend.client, backend.keys.events(preset))
    given = names or [c.integration for c in connections]
    return sqlite_lags(args.state, lambda: [*given, *(m.name for m in source.made())])


def console_mount(args: argparse.Namespace, config: Any) -> Any:
    """The console, mounted under /console on the intake's app, over the same state (see engine/console/).

    ``config`` is the integrations the service runs (an
    :class:`~engine.service.integrations.IntegrationsConfig`): each one the
    console may replay letters through, under its name.
    """
    from ..console import (
        TOKEN_ENV,
        Configured,
        Connection,
        ConsoleSource,
        ExposureRefused,
        Guard,
        check_exposure,
        create_console_app,
        mount,
    )

    token = os.environ.get(TOKEN_ENV) or None
    try:
        check_exposure(args.host, token)
    except ExposureRefused as exc:
        raise UsageError(f"--console --host {args.host}: {exc}") from None
    preset_path = [str(p) for p in getattr(args, "preset_path", []) or []]
    # With --redis the intake may have no credentials (they are not required there): only integrations whose
    # secrets are all set can replay.
    connections = [
        Connection(i.preset, i.settings, i.name)
        for i in config.integrations
        if args.redis is None or _has_credentials(i)
    ]
    configured = (
        []
        if config.path is None
        else [
            Configured(
                i.name,
                i.preset_ref or i.preset.name,
                config.path,
                i.enabled,
                None
                if args.redis is None or _has_credentials(i)
                else f"its secret setting(s) {', '.join(_missing_credentials(i))} are not set",
            )
            for i in config.integrations
        ]
    )

    mount_ = _Mount()

    def add(app: Any) -> None:
        if args.redis:
            from ..state.redis import RedisState

            backend: Any = RedisState(args.redis)
        else:
            from ..state.sqlite import SqliteState

            backend = SqliteState(args.state)

        async def close(_: Any) -> None:
            backend.close()

        source = ConsoleSource(
            backend, connections, configured=configured, preset_path=preset_path, on_change=mount_.changed
        )
        if args.redis:
            from ..console.lag import redis_lags

            source.lags = redis_lags(backend.client, backend.keys.events(config.stream))
        else:
            from ..console.lag import sqlite_lags

            # The file's and those set up in the console, as they are at each read (the same queue holds both).
            source.lags = sqlite_lags(args.state, lambda: [*config.names(), *(m.name for m in source.made())])
        mount(app, create_console_app(source, Guard(token)))
        app.on_cleanup.append(close)

    mount_.add = add
    return mount_


class _Mount:
    """``serve --console``'s mount: adds the console to the intake's app, and passes each change made in it to
    the function the service gives (:attr:`engine.service.serving.ServiceOptions.watch`), if it gives one."""

    def __init__(self) -> None:
        self.add: Any = None
        self._reload: Any = None

    def __call__(self, app: Any) -> None:
        self.add(app)

    def watch(self, reload: Any) -> None:
        self._reload = reload

    async def changed(self, name: str) -> str:
        return "" if self._reload is None else str(await self._reload(name))
