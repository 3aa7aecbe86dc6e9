"""What ``serve``, ``worker`` and ``tail`` share: one-line errors for what a service meets at start."""

from __future__ import annotations

import argparse
import contextlib
import errno
from collections.abc import Callable, Iterator
from typing import Any

from .common import UsageError, load_preset_arg, settings_for


def add_config_options(parser: Any, *, integrations: str | None = None) -> None:
    """``[PRESET] [--settings FILE]`` (the one-preset form) or ``--config FILE``; ``--integration`` with it."""
    parser.add_argument(
        "preset",
        metavar="PRESET",
        nargs="?",
        help="the one-preset form: a built-in name (destination/preset) or path to a YAML preset, "
        "served as one integration named after it (crm/contacts: crm-contacts); with neither it nor "
        "--config, the integrations set up in the console",
    )
    parser.add_argument(
        "--settings", metavar="FILE", help="with PRESET: YAML mapping of setting values; ${ENV_VAR} is expanded"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="an integrations file: the intake's keys and every integration, each a preset with "
        "its settings (signal-engine schema integrations)",
    )
    if integrations is not None:
        parser.add_argument("--integration", metavar="NAME", action="append", default=None, help=integrations)


def integrations_for(args: argparse.Namespace, *, require: bool, console_only: bool = False) -> Any:
    """The integrations a service command works with: ``--config FILE``, or PRESET as one integration.

    ``console_only`` (``serve``, ``worker``): neither is needed; the service then delivers the integrations set
    up in the console alone (read from its state store at start), and says so if there are none.
    """
    from ..service.integrations import IntegrationsConfig, IntegrationsError, load_integrations, single

    if args.config:
        if args.preset or args.settings:
            raise UsageError(
                "give --config FILE, or PRESET [--settings FILE], not both (the integrations file "
                "names each integration's preset and settings)"
            )
        import os

        from .logs import say_on_stderr

        try:
            named = getattr(args, "integration", None)
            # A worker for some integrations needs only their credentials.
            config = load_integrations(
                args.config,
                os.environ,
                preset_path=getattr(args, "preset_path", []) or [],
                require=set(named) if require and named else require,
            )
        except IntegrationsError as exc:
            raise UsageError("\n".join(exc.problems)) from None
        for warning in config.warnings:
            say_on_stderr(
                getattr(args, "log_format", "text"),
                f"signal-engine: warning: {warning}",
                "warning",
                event="literal_secret",
            )
    else:
        if not args.preset and console_only and not args.settings:
            return IntegrationsConfig([])
        if not args.preset:
            raise UsageError("name a PRESET, or pass --config FILE (an integrations file)")
        preset = load_preset_arg(args)
        config = single(preset, settings_for(args, preset.settings, require=require), args.preset)
    # A name not in the file may be an integration set up in the console: the worker checks once it has read
    # the state store (engine.service.serving.with_console_made).
    return config


def configure_for(args: argparse.Namespace) -> Callable[[Any], None]:
    """Logging to stderr, every secret the redactor knows masked."""

    def configure(redactor: Any) -> None:
        from .log_handlers import configure_logging

        configure_logging(redactor, getattr(args, "verbose", False), getattr(args, "log_format", "text"))

    return configure


@contextlib.contextmanager
def service_errors(args: argparse.Namespace) -> Iterator[None]:
    """A port in use, an unreachable Redis, a state directory another process serves: one line, exit 2."""
    from ..service.integrations import IntegrationsError

    try:
        yield
    except IntegrationsError as exc:
        raise UsageError("\n".join(exc.problems)) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE or "address already in use" in str(exc).lower():
            raise UsageError(f"--host {args.host} --port {args.port}: the address is already in use") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise UsageError(
                f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror or exc})"
            ) from None
        raise UsageError(exc.strerror or str(exc) or type(exc).__name__) from None
