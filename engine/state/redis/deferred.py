"""Script calls that may wait a few milliseconds, to share a round trip with the next call that cannot.

A worker's round trips to Redis cost more of its CPU than anything else it
does per lead. Some writes need not be made the moment they are asked for:
what the rate budget learns from an answer (its ``learn``) may reach Redis a
few milliseconds later, as if the answer had come that much later. Such a
call waits here; the next call on the same client that must go now (the
journal's record of the delivery, which follows the answer at once, or the
next take of the budget) carries it in the same pipeline, ahead of itself,
so the order of one process's calls is kept. If none comes within
:data:`DELAY_SECONDS`, the waiting calls go on their own.

Scripts are sent by ``EVALSHA``, packed once and written on a connection of
their own (:mod:`.wire`: a fifth of redis-py's CPU per call); a server that
does not know one (restarted, ``SCRIPT FLUSH``) answers ``NOSCRIPT``, and the
script is loaded with ``SCRIPT LOAD`` and that call alone sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from ...loggers import package_logger
from .wire import Script, Wire, evalsha

log = package_logger(__name__)

DELAY_SECONDS = 0.005

Call = tuple[Script, bytes]  # the script, and its EVALSHA packed


class DeferredCalls:
    def __init__(self, client: Redis, wire: Wire | None = None) -> None:
        self.r = client
        self.wire = wire or Wire(client)
        self._waiting: list[Call] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def later(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Send ``script`` with the next call that goes now, or within DELAY_SECONDS (at once outside a loop)."""
        self._waiting.append((script, evalsha(script, keys, args)))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
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
        calls, self._waiting = self._waiting, []
        calls.append((script, packed))
        answers = self.wire.run_scripts(calls)
        if len(answers) > 1:
            _log_failures(answers[:-1])
        if isinstance(answers[-1], Exception):
            raise answers[-1]
        return answers[-1]

    def flush(self) -> None:
        calls = self._take()
        if calls:
            _log_failures(self.wire.run_scripts(calls))

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush()
        except (RedisError, OSError) as exc:
            log.debug("redis: could not send deferred writes (%s); the next answer corrects them", type(exc).__name__)

    def _take(self) -> list[Call]:
        """What waits, now going. The timer is left to run (then with nothing, or what came since, to send):
        arming and cancelling one for each lead cost more than its few idle runs."""
        calls, self._waiting = self._waiting, []
        return calls


def _log_failures(answers: list[Any]) -> None:
    for answer in answers:
        if isinstance(answer, Exception):
            log.debug("redis: a deferred write failed (%s); the next one corrects it", type(answer).__name__)
