"""How a run ends early: SIGINT, SIGTERM, or a reader that closed stdout.

All three end a run the same way: read no more input, let what is on the
wire finish within the grace period, give every event that was read its one
outcome (recorded in the journal or the dead letters), then say on stderr
where the run stopped and exit with a status that tells them apart from a
run that reached the end of its input.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from .report import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_TERMINATED

SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_GRACE_SECONDS = 30.0
STDOUT_CLOSED = "stdout closed"
_EXIT_FOR = {"SIGINT": EXIT_INTERRUPTED, "SIGTERM": EXIT_TERMINATED, STDOUT_CLOSED: EXIT_BROKEN_PIPE}


class StopRequested(Exception):
    """Raised out of a blocking read when a signal arrives, so the read stops waiting."""


class RunStop:
    """What ended a run early (the first cause wins) and what that means for its exit status."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signals = 0  # how many stop signals arrived
        self.printing = True  # False once stdout is gone
        self.printed = 0  # outcome lines written
        self._reading = False

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def cause(self) -> str:
        """Why the run stopped, as the summary line says it."""
        return "stdout was closed (broken pipe)" if self.reason == STDOUT_CLOSED else f"stopped by {self.reason}"

    def exit_code(self) -> int | None:
        """130 for SIGINT, 143 for SIGTERM, 141 for a closed stdout (as a shell shows those signals); None if not stopped."""
        return _EXIT_FOR.get(self.reason) if self.reason else None

    def on_signal(self, signum: int) -> bool:
        """Count a stop signal; True for the first one (stop), False for a later one (stop now)."""
        self.signals += 1
        if self.reason is None:
            self.reason = signal.Signals(signum).name
            return True
        return False

    def stdout_closed(self) -> bool:
        """stdout is gone (EPIPE): print no more, and keep the final flush from failing. True the first time."""
        if not self.printing:
            return False
        self.printing = False
        _silence_stdout()
        if self.reason is None:
            self.reason = STDOUT_CLOSED
        return True

    def emit(self, write: Callable[[], None], *, lines: int = 1) -> bool:
        """Write (``lines`` outcome lines) unless stdout is gone; True when stdout closed just now."""
        if not self.printing:
            return False
        try:
            write()
        except BrokenPipeError:
            return self.stdout_closed()
        self.printed += lines
        return False

    # -- a blocking loop (the dry run) -------------------------------------------
    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """While inside, a stop signal interrupts the read (it raises :class:`StopRequested`)."""
        if self.reason is not None:
            raise StopRequested
        self._reading = True
        try:
            yield
        finally:
            self._reading = False

    @contextlib.contextmanager
    def signals_handled(self) -> Iterator[None]:
        """Route SIGINT and SIGTERM to this stop, for code that runs without an event loop."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self.on_signal(signum)
            if self._reading:
                self._reading = False
                raise StopRequested

        previous: dict[signal.Signals, Any] = {}
        try:
            for signum in SIGNALS:
                with contextlib.suppress(ValueError, OSError):  # not the main thread
                    previous[signum] = signal.signal(signum, handler)
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)


def seconds_arg(text: str) -> float:
    """``--grace``: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def stop_line(stop: RunStop, lines_read: int, source: str, *, delivering: bool) -> str:
    """Where the run stopped and how to go on, as one clause for the summary line."""
    text = f"{stop.cause()} after reading {lines_read:,} line(s) of {source}; the rest was not read"
    if delivering:
        text += (
            " (rerun the same input with the same --state to go on: what was delivered is skipped; "
            "`dlq replay` sends the dead letters)"
        )
    return text


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's last flush does not fail (and print) on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # a captured or replaced stdout: nothing to protect
