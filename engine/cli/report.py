"""What a run tells the person watching it: progress while it runs, one summary line at the end.

Both go to stderr, so stdout stays the machine-readable stream of outcomes.
Progress is drawn only for runs that last longer than one interval, so a
short run prints nothing but its summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from .. import outcome as oc
from ..outcome import Outcome

# Outcomes in the order a summary lists them.
OUTCOME_ORDER = (oc.DELIVERED, oc.WOULD_SEND, oc.DROPPED, oc.FAILED, oc.DEAD_LETTERED)
PROGRESS_INTERVAL = 1.0  # seconds between progress updates, and before the first one

EXIT_OK = 0  # every event ended delivered, dropped or would_send
EXIT_EVENTS_FAILED = 1  # an event failed or was dead-lettered (or: check/golden found problems)
EXIT_USAGE = 2  # a usage or configuration error: nothing was processed
# A run that ended early, every event it read with its outcome: 128 + the signal, as a shell shows it.
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C)
EXIT_BROKEN_PIPE = 141  # stdout was closed (SIGPIPE's number; the signal itself is ignored)
EXIT_TERMINATED = 143  # SIGTERM
EXIT_INTERNAL = 70  # an internal error (a bug): reported on one line, never as a traceback

# What each status means, the same for every command: docs/reference/outcomes.md is written from this.
EXIT_CODES = {
    EXIT_OK: "Every event ended delivered, dropped or would_send (or: nothing was found wrong).",
    EXIT_EVENTS_FAILED: "An event failed or was dead-lettered (or: `check`/`golden` found a problem).",
    EXIT_USAGE: "A usage or configuration error, before any event was processed.",
    EXIT_INTERNAL: "An internal error (a bug), reported on one line.",
    EXIT_INTERRUPTED: "Interrupted (SIGINT, Ctrl-C): the run stopped early, every event it read recorded.",
    EXIT_BROKEN_PIPE: "stdout was closed: the run stopped early, every event it read recorded.",
    EXIT_TERMINATED: "Terminated (SIGTERM): the run stopped early, every event it read recorded.",
}


class RunReport:
    """Counts outcomes (and drop reasons and failure causes) as they are printed."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        progress: bool = False,
        source: str = "the input",
        log_format: str = "text",
        clock: Callable[[], float] = time.monotonic,
        interval: float | None = None,
    ) -> None:
        self.stream = stream
        self.source = source
        self.json = log_format == "json"  # then every line is a JSON object, like the logs
        self.progress = progress
        self.clock = clock
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self.started = clock()
        self._next_draw = self.started + self.interval
        self._drawn = False
        self.total = 0
        self.outcomes: dict[str, int] = {}
        self.details: dict[str, dict[str, int]] = {}  # outcome -> reason or cause -> count
        self.stopped: str | None = None  # where and why a run ended early, said first in the summary

    @property
    def _out(self) -> TextIO:
        return self.stream or sys.stderr  # looked up late, so capture and redirection work

    def add(self, result: Outcome) -> None:
        self.total += 1
        self.outcomes[result.outcome] = self.outcomes.get(result.outcome, 0) + 1
        why = result.reason or result.cause
        if why:
            bucket = self.details.setdefault(result.outcome, {})
            bucket[why] = bucket.get(why, 0) + 1
        if self.progress:
            now = self.clock()
            if now >= self._next_draw:
                self._next_draw = now + self.interval
                self._draw(now)

    def exit_code(self) -> int:
        return EXIT_EVENTS_FAILED if self.outcomes.get(oc.FAILED) or self.outcomes.get(oc.DEAD_LETTERED) else EXIT_OK

    def counts_text(self) -> str:
        parts = []
        for kind in sorted(self.outcomes, key=lambda k: (OUTCOME_ORDER.index(k) if k in OUTCOME_ORDER else 99, k)):
            text = f"{self.outcomes[kind]:,} {kind}"
            details = self.details.get(kind)
            if details:
                ordered = sorted(details.items(), key=lambda item: (-item[1], item[0]))
                text += " (" + ", ".join(f"{n:,} {why}" for why, n in ordered) + ")"
            parts.append(text)
        return ", ".join(parts)

    def summary(self, extra: str | None = None) -> str:
        elapsed = self.clock() - self.started
        if self.stopped:
            line = f"signal-engine: {self.stopped}: {self.total:,} event(s) in {_duration(elapsed)}"
            line += f": {self.counts_text()}" if self.total else ""
        elif not self.total:
            line = f"signal-engine: no events: {self.source} is empty"
        else:
            line = f"signal-engine: {self.total:,} event(s) in {_duration(elapsed)}: {self.counts_text()}"
        line = f"{line}; {extra}" if extra else line
        if self.json:
            from .logs import json_line  # JSON logs only: plain runs never load logging

            fields = {"stopped": self.stopped} if self.stopped else {}
            return json_line(
                "warning" if self.stopped else "info",
                line.removeprefix("signal-engine: "),
                event="summary",
                events=self.total,
                seconds=round(elapsed, 3),
                outcomes=dict(self.outcomes),
                details=self.details,
                **fields,
            )
        return line

    def finish(self, extra: str | None = None) -> None:
        """Clear the progress line, then print the summary (always, dry runs included)."""
        out = self._out
        if self._drawn and not self.json and _is_tty(out):
            out.write("\r\x1b[K")
        out.write(self.summary(extra) + "\n")
        out.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.total / elapsed
        text = f"signal-engine: {self.total:,} event(s), {rate:,.0f}/s: {self.counts_text()}"
        out = self._out
        if self.json:
            from .logs import json_line

            out.write(
                json_line(
                    "info",
                    text.removeprefix("signal-engine: "),
                    event="progress",
                    events=self.total,
                    rate=round(rate, 1),
                    outcomes=dict(self.outcomes),
                )
                + "\n"
            )
        elif _is_tty(out):
            out.write("\r\x1b[K" + text)
        else:
            out.write(text + "\n")
        out.flush()
        self._drawn = True


def wants_progress(flag: bool | None, stream: TextIO | None = None) -> bool:
    """--progress / --no-progress decide; without either, progress is shown on a terminal."""
    if flag is not None:
        return flag
    return _is_tty(stream or sys.stderr)


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
