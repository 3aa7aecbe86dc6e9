"""What a store raises when the state cannot be read or written.

Subclasses of :class:`OSError`, so code that already guards its writes
against a full disk (``except OSError``) also catches a database that
refused a write. Reads usually still work when writes do not: a full disk
does not stop the engine from finding out what it already knows.
"""

from __future__ import annotations

import errno


class StateError(OSError):
    """The state could not be read or opened."""

    def __init__(self, message: str, *, code: int = errno.EIO) -> None:
        super().__init__(code, message)


class StateWriteError(StateError):
    """A write failed: disk full, read-only, or locked by another process for too long."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message, code=errno.ENOSPC if full else errno.EIO)
        self.full = full
