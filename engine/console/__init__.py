"""The web console: a face over the engine's stores (the record of recent events, the dead letters).

It reads what a ``run``, a ``dlq replay``, ``serve`` or the workers recorded,
and writes only through the operations the CLI has (replaying dead
letters). Nothing below it imports it.
"""

from .app import create_console_app, mount, standalone
from .security import TOKEN_ENV, ExposureRefused, Guard, check_exposure
from .source import Configured, Connection, ConsoleSource

__all__ = [
    "TOKEN_ENV",
    "Configured",
    "Connection",
    "ConsoleSource",
    "ExposureRefused",
    "Guard",
    "check_exposure",
    "create_console_app",
    "mount",
    "standalone",
]
