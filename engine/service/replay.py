"""Signatures the intake accepted lately, so a signed request replayed within its window is refused.

A signed request carries its timestamp, and one more than the allowed skew
(5 minutes) off is refused as stale. Within that window the same bytes could
be sent again by anyone who saw them once (a log, a proxy): the signature is
remembered until the timestamp it covers can no longer be accepted.

A signature is *reserved* when its request is checked and *forgotten* again
if the request is then refused (a 503 or a 429: the client retries the same
signed bytes, which must then pass), so two copies arriving at once cannot
both be accepted.

Memory is bounded: at most ``limit`` signatures (32 bytes each, about 100
bytes with their bookkeeping). Past that the oldest are forgotten early, and
a warning says so. The memory is per intake process.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


class SignatureMemory:
    def __init__(self, keep_seconds: float, limit: int, clock: Callable[[], float] = time.time) -> None:
        self.keep_seconds = keep_seconds
        self.limit = max(1, limit)
        self._clock = clock
        self._until: dict[bytes, float] = {}
        self._order: collections.deque[tuple[float, bytes]] = collections.deque()
        self._warned = False

    def reserve(self, digest: bytes) -> bool:
        """True, and remembered, unless this signature was accepted (or is being checked) already."""
        now = self._clock()
        self._expire(now)
        until = self._until.get(digest)
        if until is not None and until > now:
            return False
        if len(self._until) >= self.limit:
            self._forget_oldest()
        self._until[digest] = now + self.keep_seconds
        self._order.append((now + self.keep_seconds, digest))
        return True

    def forget(self, digest: bytes) -> None:
        self._until.pop(digest, None)  # its place in _order is dropped when it expires

    def __len__(self) -> int:
        return len(self._until)

    def _expire(self, now: float) -> None:
        while self._order and self._order[0][0] <= now:
            until, digest = self._order.popleft()
            if self._until.get(digest) == until:
                del self._until[digest]

    def _forget_oldest(self) -> None:
        if not self._warned:
            log.warning("intake: more than %d signed requests within the replay window; the oldest signatures are "
                        "forgotten early (a replay of those is no longer refused)", self.limit)
            self._warned = True
        while self._order and len(self._until) >= self.limit:
            until, digest = self._order.popleft()
            if self._until.get(digest) == until:
                del self._until[digest]
