"""The delivery journal in Redis: one key per delivered event, expiring with the dedupe window.

Memory is bounded the same way as the SQLite journal's rows: one small key
per event delivered within the window; Redis expires the rest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from redis import Redis

from .errors import reading, writing
from .keys import Keys


class RedisJournal:
    def __init__(
        self, client: Redis, keys: Keys, preset: str, window_seconds: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.r = client
        self.keys = keys
        self.preset = preset
        self.window = window_seconds
        self._clock = clock

    def delivered_at(self, key: str) -> float | None:
        if self.window <= 0:
            return None
        with reading("the delivery journal"):
            value = self.r.get(self.keys.journal(self.preset, key))
        if value is None or self._clock() - float(value) > self.window:
            return None
        return float(value)

    def record(self, key: str, at: float | None = None) -> None:
        if self.window <= 0:
            return
        when = self._clock() if at is None else at
        with writing("the delivery journal"):
            self.r.set(self.keys.journal(self.preset, key), repr(when), ex=max(1, math.ceil(self.window)))
