"""The delivery journal in Redis: one key per delivered event, expiring with the dedupe window.

Memory is bounded the same way as the SQLite journal's rows: one small key
per event delivered within the window; Redis expires the rest.

Round trips, which are most of a worker's cost in Redis:

* ``record`` is one script: the journal key is set, and the dead letter the
  same event may have left is looked up in the same call; what the rate
  budget learnt from the delivery's answer goes in the same round trip
  (:mod:`.deferred`). The engine's
  ``discard`` of that letter, which follows at once, reads the answer from
  :class:`LetterHints` instead of asking Redis again.
* ``record_later`` is the same script, waiting for the process's next
  round trip (the next take of the rate budget, or a few milliseconds): the
  engine awaits it before handing the outcome out (``BufferedJournal.record_soon``),
  so a lead costs one round trip, not two.
* ``prefetch`` reads the journal keys of a whole batch in one ``MGET``, for
  a worker that holds the batch's event locks (no other worker can deliver
  those events meanwhile); each ``delivered_at`` then answers from it once.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Sequence

from redis import Redis

from ..errors import StateWriteError
from .deferred import DeferredCalls
from .errors import reading, writing
from .keys import Keys
from .wire import encode, pack

PREFETCHED_MAX = 8192  # a worker holds a few batches at once; beyond this the oldest are asked again

# KEYS: the journal key, the dead letters' index. ARGV: the time, seconds to keep, the index field.
RECORD = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return redis.call('HGET', KEYS[2], ARGV[3])
"""


class LetterHints:
    """What the journal learnt, while recording a delivery, about the event's dead letter: its id, or None.

    Shared by a backend's journal and dead letters: the engine records a
    delivery, then at once discards the event's letter; the second step
    reads the first's answer (once) instead of making a round trip of its own.
    """

    def __init__(self, limit: int = PREFETCHED_MAX) -> None:
        self._known: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._limit = limit

    def note(self, index: str, letter_id: str | None) -> None:
        self._known[index] = letter_id
        while len(self._known) > self._limit:
            self._known.popitem(last=False)

    def take(self, index: str) -> tuple[bool, str | None]:
        """(known, letter id): known False when nothing was noted for ``index`` (ask Redis)."""
        if index not in self._known:
            return False, None
        return True, self._known.pop(index)


class RedisJournal:
    def __init__(
        self,
        client: Redis,
        keys: Keys,
        preset: str,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
        hints: LetterHints | None = None,
        deferred: DeferredCalls | None = None,
    ) -> None:
        self.r = client
        self.deferred = deferred or DeferredCalls(client)
        self.keys = keys
        self.preset = preset
        self.window = window_seconds
        self._clock = clock
        self._hints = hints
        self._letter_keys = keys.letter_keys()
        self._record = client.register_script(RECORD)
        self._prefetched: collections.OrderedDict[str, bytes | str | None] = collections.OrderedDict()

    def prefetch(self, keys: Sequence[str]) -> None:
        """Read the journal for ``keys`` now, in one round trip; only for events whose locks are held."""
        if self.window <= 0 or not keys:
            return
        names = [self.keys.journal(self.preset, key) for key in keys]
        with reading("the delivery journal"):
            (values,) = self.deferred.wire.call([pack(b"MGET", *map(encode, names))])
            if isinstance(values, Exception):
                raise values
        for key, value in zip(keys, values, strict=True):
            self._prefetched[key] = value
            self._prefetched.move_to_end(key)
        while len(self._prefetched) > PREFETCHED_MAX:
            self._prefetched.popitem(last=False)

    def delivered_at(self, key: str) -> float | None:
        if self.window <= 0:
            return None
        if key in self._prefetched:
            value: bytes | str | None = self._prefetched.pop(key)  # once: a second copy of the event asks Redis
        else:
            with reading("the delivery journal"):
                value = self.r.get(self.keys.journal(self.preset, key))
        if value is None or self._clock() - float(value) > self.window:
            return None
        return float(value)

    def record(self, key: str, at: float | None = None) -> None:
        if self.window <= 0:
            return
        when = self._clock() if at is None else at
        self._prefetched.pop(key, None)
        index = f"{self.preset}\0{key}"
        with writing("the delivery journal"):
            letter = self.deferred.now(  # with what the rate budget learnt from the delivery's answer
                self._record,
                [self.keys.journal(self.preset, key), self._letter_keys],
                [repr(when), max(1, math.ceil(self.window)), index],
            )
        self._noted(index, letter)

    def record_later(
        self, key: str, at: float, refused: Callable[[StateWriteError], None] | None = None
    ) -> asyncio.Future[None]:
        """:meth:`record`, sent with the next round trip (:mod:`.deferred`); done once Redis answered it.

        When Redis refused it or the round trip was lost: ``refused`` is given the error (it keeps the
        record, to retry it as :meth:`record`'s caller would) and the future is done; without ``refused``
        the future fails with it. ``refused`` is called even when the future was cancelled meanwhile.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.window <= 0:
            done.set_result(None)
            return done
        self._prefetched.pop(key, None)
        index = f"{self.preset}\0{key}"

        def answered(letter: object) -> None:
            # A batch's journal read (``prefetch``) made while this waited saw no record: forget what it
            # saw, or a second copy of the event waiting on its lock would be delivered again.
            self._prefetched.pop(key, None)
            if isinstance(letter, Exception):
                message = f"redis: cannot write the delivery journal ({type(letter).__name__})"
                error = StateWriteError(message, full="OOM" in str(letter))
                if refused is not None:
                    refused(error)
                    if not done.done():
                        done.set_result(None)
                elif not done.done():
                    done.set_exception(error)
                return
            self._noted(index, letter)
            if not done.done():
                done.set_result(None)

        self.deferred.later(
            self._record,
            [self.keys.journal(self.preset, key), self._letter_keys],
            [repr(at), max(1, math.ceil(self.window)), index],
            answered,
        )
        return done

    def _noted(self, index: str, letter: object) -> None:
        if self._hints is not None:
            self._hints.note(
                index, None if letter is None else letter.decode() if isinstance(letter, bytes) else str(letter)
            )
