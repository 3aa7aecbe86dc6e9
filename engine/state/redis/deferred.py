"""Script calls that may wait a few milliseconds, to share a round trip with the next call that cannot.

A worker's round trips to Redis cost more of its CPU than anything else it
does per lead. Some writes need not be made the moment they are asked for:
what the rate budget learns from an answer (its ``learn``) may reach Redis a
few milliseconds later, as if the answer had come that much later. Such a
call waits here; the next call on the same client that must go now (the
next take of the budget, mostly) carries it in the same pipeline, ahead of
itself, so the order of one process's calls is kept. If none comes within
:data:`DELAY_SECONDS` of the oldest waiting call, the waiting calls go on
their own.

A waiting call may want its answer (:meth:`DeferredCalls.later` with
``answered``): the journal's record of a delivery waits here too, for the
next take of the budget, and the engine hands the outcome out only once
``answered`` was given Redis's reply (or the error that met the round trip:
the journal then keeps the record and retries it). One round trip a lead,
not two.

Scripts are sent by ``EVALSHA``, packed once and written on a connection of
their own (:mod:`.wire`: a fifth of redis-py's CPU per call); a server that
does not know one (restarted, ``SCRIPT FLUSH``) answers ``NOSCRIPT``, and the
script is loaded with ``SCRIPT LOAD`` and that call alone sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from ...loggers import package_logger
from .wire import Script, Wire, evalsha

log = package_logger(__name__)

DELAY_SECONDS = 0.005

Answered = Callable[[Any], None]  # given a waiting call's reply, or the exception that met it
Call = tuple[Script, bytes]  # the script, and its EVALSHA packed


class DeferredCalls:
    def __init__(self, client: Redis, wire: Wire | None = None) -> None:
        self.r = client
        self.wire = wire or Wire(client)
        self._waiting: list[Call] = []
        self._answered: dict[int, Answered] = {}  # position in _waiting -> who waits for that call's reply
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._since = 0.0  # when the oldest call waiting came (its loop's clock)

    def later(self, script: Script, keys: Sequence[Any], args: Sequence[Any], answered: Answered | None = None) -> None:
        """Send ``script`` with the next call that goes now, or within DELAY_SECONDS (at once outside a loop).

        ``answered`` is given the reply, or the exception that met the call (one Redis refused, or a lost
        round trip), exactly once; it must not raise.
        """
        if answered is not None:
            self._answered[len(self._waiting)] = answered
        first = not self._waiting
        self._waiting.append((script, evalsha(script, keys, args)))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if first:
            self._since = loop.time()
        if self._timer is None or self._timer_loop is not loop:  # one armed earlier still runs: sooner, not later
            self._timer, self._timer_loop = loop.call_later(DELAY_SECONDS, self._on_timer), loop

    def now(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script``'s answer, sent with every waiting call ahead of it in one round trip.

        Raises what Redis raised for this call; what the waiting calls met is logged, as each of them would
        have swallowed it on its own (they are writes whose loss the next one repairs).
        """
        return self.now_packed(script, evalsha(script, keys, args))

    def now_packed(self, script: Script, packed: bytes) -> Any:
        """:meth:`now` with the call packed already (:func:`.wire.evalsha`): one whose arguments never change."""
        calls, answered = self._take()
        waited = len(calls)
        calls.append((script, packed))
        answers = self._send(calls, answered, waited)
        if isinstance(answers[-1], Exception):
            raise answers[-1]
        return answers[-1]

    def flush(self) -> None:
        calls, answered = self._take()
        if calls:
            self._send(calls, answered, len(calls))

    def _send(self, calls: list[Call], answered: dict[int, Answered], waited: int) -> list[Any]:
        """One round trip for ``calls``; the reply of each of the first ``waited`` (those that waited) to
        whoever waits for it, or logged (a write whose loss the next one repairs)."""
        try:
            answers = self.wire.run_scripts(calls)
        except BaseException as exc:
            for each in answered.values():
                each(exc if isinstance(exc, Exception) else ConnectionError("the round trip was interrupted"))
            raise
        for i, answer in enumerate(answers[:waited]):
            waiter = answered.get(i)
            if waiter is not None:
                waiter(answer)
            elif isinstance(answer, Exception):
                log.debug("redis: a deferred write failed (%s); the next one corrects it", type(answer).__name__)
        return answers

    def _on_timer(self) -> None:
        self._timer = None
        loop = self._timer_loop
        if self._waiting and loop is not None:
            # The timer was armed for calls that have gone since: what waits now came later, and may wait
            # its own DELAY_SECONDS for a call to ride with (flushed now, it would cost a round trip of its own).
            left = self._since + DELAY_SECONDS - loop.time()
            if left > 0:
                self._timer = loop.call_later(left, self._on_timer)
                return
        try:
            self.flush()
        except (RedisError, OSError) as exc:
            log.debug("redis: could not send deferred writes (%s); the next answer corrects them", type(exc).__name__)

    def _take(self) -> tuple[list[Call], dict[int, Answered]]:
        """What waits, now going. The timer is left to run (then with nothing, or what came since, to send):
        arming and cancelling one for each lead cost more than its few idle runs."""
        calls, self._waiting = self._waiting, []
        answered, self._answered = self._answered, {}
        return calls, answered
