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

Scripts are sent by ``EVALSHA``; a server that does not know one (restarted,
``SCRIPT FLUSH``) answers ``NOSCRIPT``, and the script is loaded with
``SCRIPT LOAD`` and that call alone sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisError

from ...loggers import package_logger

log = package_logger(__name__)

DELAY_SECONDS = 0.005

Call = tuple[Script, Sequence[Any], Sequence[Any]]


class DeferredCalls:
    def __init__(self, client: Redis) -> None:
        self.r = client
        self._waiting: list[Call] = []
        self._timer: asyncio.TimerHandle | None = None

    def later(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Send ``script`` with the next call that goes now, or within DELAY_SECONDS (at once outside a loop)."""
        self._waiting.append((script, keys, args))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer is None:
            self._timer = loop.call_later(DELAY_SECONDS, self._on_timer)

    def now(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``script``'s answer, sent with every waiting call ahead of it in one round trip.

        Raises what Redis raised for this call; what the waiting calls met is logged, as each of them would
        have swallowed it on its own (they are writes whose loss the next one repairs).
        """
        calls = self._take()
        calls.append((script, keys, args))
        answers = self._send(calls)
        _log_failures(answers[:-1])
        if isinstance(answers[-1], Exception):
            raise answers[-1]
        return answers[-1]

    def flush(self) -> None:
        calls = self._take()
        if calls:
            _log_failures(self._send(calls))

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.flush()
        except (RedisError, OSError) as exc:
            log.debug("redis: could not send deferred writes (%s); the next answer corrects them", type(exc).__name__)

    def _take(self) -> list[Call]:
        calls, self._waiting = self._waiting, []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return calls

    def _send(self, calls: list[Call]) -> list[Any]:
        """One round trip (a pipeline, not a transaction); calls answered NOSCRIPT are loaded and sent again."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            try:
                return [script(keys=keys, args=args)]  # redis-py's own NOSCRIPT fallback
            except RedisError as exc:
                return [exc]
        answers = self._pipeline(calls)
        missing = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if missing:
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                script.sha = self.r.script_load(script.script)
            for i, answer in zip(missing, self._pipeline([calls[i] for i in missing]), strict=True):
                answers[i] = answer
        return answers

    def _pipeline(self, calls: list[Call]) -> list[Any]:
        with self.r.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(pipe.execute(raise_on_error=False))


def _log_failures(answers: list[Any]) -> None:
    for answer in answers:
        if isinstance(answer, Exception):
            log.debug("redis: a deferred write failed (%s); the next one corrects it", type(answer).__name__)
