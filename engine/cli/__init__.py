"""The ``signal-engine`` command line: one module per command, dispatched by :mod:`.main`."""

from .main import main

__all__ = ["main"]
