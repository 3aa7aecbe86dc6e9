"""Signatures the intake accepted lately, so a signed request replayed within its window is refused.

A signed request carries its timestamp, and one more than the allowed skew
(5 minutes) off is refused as stale. Within that window the same bytes could
be sent again by anyone who saw them once (a log, a proxy): the signature is
remembered until the timestamp it covers can no longer be accepted.

A signature goes through two states:

* **in flight** from the moment its request is checked (:meth:`reserve`)
  until its events are queued. A copy arriving then is told to retry
  (:data:`IN_FLIGHT`), not that it was accepted: the first copy may still
  fail, and a client told "already accepted" would drop its events.
* **committed** once the events are queued (:meth:`commit`): a copy is a
  replay (:data:`COMMITTED`).

A request refused after its check (a 503 or a 429: the client retries the
same signed bytes, which must then pass) is *forgotten* (:meth:`forget`).
So two copies arriving at once are never both accepted, and a retry is
never refused for a copy that failed.

Memory is bounded: at most ``limit`` signatures, one entry each however often
a signature is reserved and forgotten (32 bytes, about 250 with their
bookkeeping). Past the limit the oldest are forgotten early, and a warning
says so. The memory is per intake process.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Literal

from ..loggers import package_logger

log = package_logger(__name__)

Reservation = Literal["reserved", "in_flight", "committed"]
RESERVED: Reservation = "reserved"  # new: this request holds it now
IN_FLIGHT: Reservation = "in_flight"  # another copy holds it and is being queued
COMMITTED: Reservation = "committed"  # another copy was accepted


class SignatureMemory:
    def __init__(self, keep_seconds: float, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.keep_seconds = keep_seconds
        self.limit = max(1, limit)
        self._clock = clock
        # digest -> (remembered until, committed), in the order reserved, so oldest first: expiry only looks at
        # the front, and forgetting removes the one entry a signature has.
        self._seen: collections.OrderedDict[bytes, tuple[float, bool]] = collections.OrderedDict()
        self._warned = False

    def reserve(self, digest: bytes) -> Reservation:
        """:data:`RESERVED` (and held in flight) unless a copy is in flight or was accepted already."""
        now = self._clock()
        self._expire(now)
        held = self._seen.get(digest)
        if held is not None:
            return COMMITTED if held[1] else IN_FLIGHT
        if len(self._seen) >= self.limit:
            self._forget_oldest()
        self._seen[digest] = (now + self.keep_seconds, False)
        return RESERVED

    def commit(self, digest: bytes) -> None:
        """Its events are queued: from now on a copy is a replay."""
        held = self._seen.get(digest)
        if held is not None:
            self._seen[digest] = (held[0], True)

    def forget(self, digest: bytes) -> None:
        """Not accepted after all: the client's retry of the same bytes must pass."""
        self._seen.pop(digest, None)

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            digest, (until, _) = next(iter(self._seen.items()))
            if until > now:
                return
            del self._seen[digest]

    def _forget_oldest(self) -> None:
        if not self._warned:
            log.warning(
                "intake: more than %d signed requests within the replay window; the oldest signatures are "
                "forgotten early (a replay of those is no longer refused)",
                self.limit,
            )
            self._warned = True
        while len(self._seen) >= self.limit:
            self._seen.popitem(last=False)
