"""Ending early: why and until when a stopped engine lets what is on the wire finish, and the outcome of
what it ends.

:meth:`engine.runtime.Engine.stop` sends nothing more; a delivery whose
first request had not left ends at once, one on the wire may finish within
the grace period. Either way the event keeps its one outcome, a dead letter.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .. import outcome as oc
from ..outcome import Outcome
from ..pipeline.prepare import Prepared


class Stop:
    """Why and until when an engine that was stopped lets its requests on the wire finish."""

    def __init__(self, reason: str, grace: float, deadline: float) -> None:
        self.reason = reason
        self.grace = grace
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None


def stopped_outcome(prepared: Prepared, sent: int, stop: Stop, request: dict[str, Any]) -> Outcome:
    """A delivery that ``stop`` ended: not sent (no request had left) or interrupted (one was on the wire).

    Both are dead letters holding the event's first request (``request``, masked), so a replay sends it again.
    """
    if not sent:
        return Outcome(
            prepared.index,
            prepared.message_id,
            oc.DEAD_LETTERED,
            cause=oc.NOT_SENT,
            detail=f"not sent: the run was stopped ({stop.reason}) before this event's request left; kept for replay",
            request=request,
            attempts=0,
        )
    return Outcome(
        prepared.index,
        prepared.message_id,
        oc.DEAD_LETTERED,
        cause=oc.INTERRUPTED,
        detail=f"sent, but still unanswered when the run stopped ({stop.reason}, "
        f"{stop.grace:g}s grace): the destination may have it; kept for replay",
        request=request,
        attempts=sent,
    )


class Stopping:
    """The Engine's ``stop``; the engine provides what is declared below."""

    if TYPE_CHECKING:
        _stop: Stop | None
        _stop_requested: asyncio.Future[None] | None
        _active: dict[asyncio.Future[Outcome], list[int]]

    def stop(self, grace: float = 30.0, reason: str = "the engine was stopped") -> None:
        """End early: send nothing more; give what is on the wire ``grace`` seconds; record everything.

        Every event still gets its one outcome. One whose first request had
        not left ends at once as ``dead_lettered`` with cause ``not_sent``;
        one on the wire (or retrying) may finish within ``grace`` seconds,
        after which it is cut off and dead-lettered as ``interrupted`` (the
        destination may have it). :meth:`process_batches` stops asking its
        source for more and ends once the events it took have their outcomes.
        ``reason`` (e.g. "SIGTERM") goes into those outcomes' details.
        Calling ``stop`` again shortens the grace period (``stop(0)``: now).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, grace)
        if self._stop is None:
            self._stop = Stop(reason, max(0.0, grace), deadline)
            if self._stop_requested is not None and not self._stop_requested.done():
                self._stop_requested.set_result(None)
        elif deadline >= self._stop.deadline:
            return
        self._stop.deadline = deadline
        if self._stop.timer is not None:
            self._stop.timer.cancel()
        self._stop.timer = loop.call_at(deadline, self._cut_off)
        for work, sent in list(self._active.items()):
            if not sent[0]:
                work.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    def in_flight(self) -> int:
        """Deliveries with a request on the wire (or between retries) now."""
        return sum(1 for sent in self._active.values() if sent[0])

    def _cut_off(self) -> None:
        """The grace period is over: whatever is still under way ends now, as a dead letter."""
        for work in list(self._active):
            work.cancel()
