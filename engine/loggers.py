"""The package's loggers, each made with the handler that keeps the package silent in a host that set none.

Why not simply ``logging.getLogger`` in each module and a ``NullHandler``
added by ``import engine``: importing :mod:`logging` costs a few
milliseconds of a dry run's start, which is only tens of milliseconds and
logs nothing. So ``import engine`` adds the handler only when the host has
imported logging already, and every module of the package makes its logger
through :func:`package_logger`, which adds it otherwise: no record of ours
reaches logging's last resort (stderr) in a host that configured nothing.
A module on a dry run's path calls it where it logs, not at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

ROOT = "engine"  # every logger of the package lives below this one (``engine.delivery.sender`` …)


def package_logger(name: str) -> logging.Logger:
    """The logger ``name`` (a module's ``__name__`` or ``__package__``), the package's NullHandler in place."""
    import logging

    root = logging.getLogger(ROOT)
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())
    return logging.getLogger(name)


__all__ = ["ROOT", "package_logger"]
