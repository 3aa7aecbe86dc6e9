"""Identity memory in Redis, shared by every intake and worker of a preset.

One hash per (id field, id): the traits as JSON, the owner, the entry's
size and when it was last seen. A merge is one optimistic transaction
(``WATCH`` the entries, read, apply :func:`~engine.state.identity.merged`,
``MULTI``/``EXEC``, again if another process changed them meanwhile), so two
processes identifying the same person at once both land, with the same
merge rule as every other store.

Bounds as in the SQLite store: entries not seen for ``ttl_seconds`` are
never returned and are purged, and past ``max_bytes`` the least recently
seen go first (a sorted set of last sight, and a byte counter, both kept in
the same transaction; eviction is one Lua script).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping, Sequence

from redis import Redis
from redis.exceptions import WatchError

from ..identity import (
    IdentityLimits,
    Remembered,
    Slot,
    entry_bytes,
    merged,
    traits_json,
)
from .errors import reading, writing
from .keys import Keys

TOUCH_SECONDS = 3600.0
PURGE_BATCH = 1000
MAX_RETRIES = 50

# KEYS: the last-seen sorted set, the byte counter. ARGV: max_bytes, cutoff (older is expired), batch.
EVICT = """
local function drop(member)
  local size = tonumber(redis.call('HGET', member, 'bytes') or '0') or 0
  redis.call('DEL', member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('DECRBY', KEYS[2], size)
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
  drop(member)
end
local dropped = 0
while tonumber(redis.call('GET', KEYS[2]) or '0') > tonumber(ARGV[1]) do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #oldest == 0 then break end
  drop(oldest[1])
  dropped = dropped + 1
end
return dropped
"""


class RedisIdentityStore:
    def __init__(self, client: Redis, keys: Keys, preset: str, limits: IdentityLimits | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.r = client
        self.keys = keys
        self.preset = preset
        self.limits = limits or IdentityLimits()
        self._clock = clock
        self._seen = keys.identity_seen(preset)
        self._bytes = keys.identity_bytes(preset)
        self._evict = client.register_script(EVICT)

    def _key(self, slot_kind: str, ident: str) -> str:
        return self.keys.identity(self.preset, slot_kind, ident)

    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        if not slots:
            return
        names = [self._key(s.kind, s.ident) for s in slots]
        with writing("the identity memory"), self.r.pipeline() as pipe:
            for _ in range(MAX_RETRIES):
                try:
                    pipe.watch(*names)
                    now = self._clock()
                    rows = [pipe.hmget(name, "traits", "owner", "bytes", "seen") for name in names]
                    pipe.multi()
                    delta = 0
                    for slot, name, row in zip(slots, names, rows, strict=True):
                        existing = _remembered(row, now, self.limits.ttl_seconds)
                        new = merged(existing, traits, owner, slot.exclusive)
                        text = traits_json(new.traits)
                        size = entry_bytes(slot.kind, slot.ident, new.owner, text)
                        delta += size - int(row[2] or 0)
                        pipe.hset(name, mapping={"traits": text, "owner": new.owner or "", "bytes": size, "seen": now})
                        pipe.zadd(self._seen, {name: now})
                    pipe.incrby(self._bytes, delta)
                    pipe.execute()
                    break
                except WatchError:
                    continue
            else:
                raise WatchError("the identity entries kept changing")
            self._evict(keys=[self._seen, self._bytes],
                        args=[self.limits.max_bytes, now - self.limits.ttl_seconds, PURGE_BATCH])

    def recall(self, kind: str, ident: str) -> Remembered | None:
        name = self._key(kind, ident)
        with reading("the identity memory"):
            row = self.r.hmget(name, "traits", "owner", "bytes", "seen")
        now = self._clock()
        entry = _remembered(row, now, self.limits.ttl_seconds)
        seen = row[3]
        if entry is not None and seen is not None and now - float(seen) > TOUCH_SECONDS:
            try:
                with writing("the identity memory"):
                    pipe = self.r.pipeline()
                    pipe.hset(name, "seen", now)
                    pipe.zadd(self._seen, {name: now})
                    pipe.execute()
            except OSError:
                pass  # keeping the order of last sight is best effort; the traits are what matter
        return entry

    def forget(self, slots: Sequence[Slot]) -> None:
        names = [self._key(s.kind, s.ident) for s in slots]
        if not names:
            return
        with writing("the identity memory"), self.r.pipeline() as pipe:
            for _ in range(MAX_RETRIES):
                try:
                    pipe.watch(*names)
                    sizes = [int(pipe.hget(name, "bytes") or 0) for name in names]
                    pipe.multi()
                    pipe.delete(*names)
                    pipe.zrem(self._seen, *names)
                    pipe.decrby(self._bytes, sum(sizes))
                    pipe.execute()
                    return
                except WatchError:
                    continue
            raise WatchError("the identity entries kept changing")

    def usage(self) -> tuple[int, int]:
        """(bytes, entries) counted against the bounds."""
        with reading("the identity memory"):
            return int(self.r.get(self._bytes) or 0), int(self.r.zcard(self._seen))

    def __len__(self) -> int:
        return self.usage()[1]


class ReadOnlyIdentity:
    """The identity a worker sees when the intake writes it: recall only.

    In the distributed mode the intake merges each identify before it
    answers 200 (see :mod:`engine.service.intake`); a worker merging the same
    identify again, later and out of order with newer ones, could put back
    traits a newer identify replaced. So the worker's merges are no-ops.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        return None

    def forget(self, slots: Sequence[Slot]) -> None:
        return None

    def recall(self, kind: str, ident: str) -> Remembered | None:
        return self.inner.recall(kind, ident)


def _remembered(row: Sequence[Any], now: float, ttl: float) -> Remembered | None:
    text, owner, _, seen = row
    if text is None or seen is None or now - float(seen) > ttl:
        return None
    owner_text = owner.decode("utf-8", "surrogatepass") if isinstance(owner, bytes) else owner
    return Remembered(json.loads(text), owner_text or None)
