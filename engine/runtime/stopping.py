"""Ending early: why and until when a stopped engine lets what is on the wire finish, and the outcome of
what it ends.

:meth:`engine.runtime.Engine.stop` sends nothing more; a delivery whose
first request had not left ends at once, one on the wire may finish within
the grace period. Either way the event keeps its one outcome, a dead letter.
"""

from __future__ import annotations

import asyncio
from typing import Any

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
