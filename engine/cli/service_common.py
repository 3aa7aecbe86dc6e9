"""What ``serve``, ``worker`` and ``tail`` share: one-line errors for what a service meets at start."""

from __future__ import annotations

import argparse
import contextlib
import errno
from typing import Any, Callable, Iterator

from .common import UsageError


def configure_for(args: argparse.Namespace) -> Callable[[Any], None]:
    """Logging to stderr, every secret the redactor knows masked."""

    def configure(redactor: Any) -> None:
        from .logs import configure_logging

        configure_logging(redactor, getattr(args, "verbose", False), getattr(args, "log_format", "text"))

    return configure


@contextlib.contextmanager
def service_errors(args: argparse.Namespace) -> Iterator[None]:
    """A port in use, an unreachable Redis, a state directory another process serves: one line, exit 2."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE or "address already in use" in str(exc).lower():
            raise UsageError(f"--host {args.host} --port {args.port}: the address is already in use") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise UsageError(f"--host {args.host} --port {args.port}: cannot listen there "
                             f"({exc.strerror or exc})") from None
        raise UsageError(exc.strerror or str(exc) or type(exc).__name__) from None
