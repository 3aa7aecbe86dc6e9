"""Identity memory in Redis, shared by every intake and worker of a preset.

One hash per (id field, id): the traits as JSON, the owner, the entry's
size and when it was last seen. A merge is optimistic and takes two round
trips: read the entries (one script), apply
:func:`~engine.state.identity.merged`, then one Lua script writes them only
if each is still as read (and evicts), else it is read and merged again; so
two processes identifying the same person at once both land, with the same
merge rule as every other store.

Bounds as in the SQLite store: entries not seen for ``ttl_seconds`` are
never returned and are purged, and past ``max_bytes`` the least recently
seen go first (a sorted set of last sight, and a byte counter, both kept in
the same transaction; eviction is one Lua script).
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
from .wire import Wire, evalsha

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


# KEYS: the last-seen sorted set, the byte counter, then the entries. ARGV: max_bytes, cutoff, batch, now,
# then per entry its four fields as read ("0" absent, "1" .. value present) and its traits, owner, size.
# Returns 0 when written, 1 when an entry changed since it was read (nothing written: merge again).
MERGE = (
    """
local fields = {'traits', 'owner', 'bytes', 'seen'}
local n = #KEYS - 2
for i = 1, n do
  local row = redis.call('HMGET', KEYS[i + 2], 'traits', 'owner', 'bytes', 'seen')
  for f = 1, 4 do
    local expected = ARGV[4 + (i - 1) * 7 + f]
    local actual = row[f]
    if actual then
      if expected ~= '1' .. actual then return 1 end
    elseif expected ~= '0' then
      return 1
    end
  end
end
local delta = 0
for i = 1, n do
  local base = 4 + (i - 1) * 7
  local old = ARGV[base + 3]
  local old_size = 0
  if old ~= '0' then old_size = tonumber(string.sub(old, 2)) or 0 end
  redis.call('HSET', KEYS[i + 2], 'traits', ARGV[base + 5], 'owner', ARGV[base + 6], 'bytes', ARGV[base + 7],
             'seen', ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[4], KEYS[i + 2])
  delta = delta + tonumber(ARGV[base + 7]) - old_size
end
redis.call('INCRBY', KEYS[2], delta)
"""
    + EVICT
    + """
"""
)
MERGE = MERGE.replace("return dropped", "return 0")
PREFETCHED_MAX = 8192  # a worker holds a few batches at once; beyond this the oldest are asked again


# KEYS: the entries. Each one's four fields (nil where absent): one command, however many entries are read.
READ = """
local rows = {}
for i = 1, #KEYS do
  rows[i] = redis.call('HMGET', KEYS[i], 'traits', 'owner', 'bytes', 'seen')
end
return rows
"""


class RedisIdentityStore:
    def __init__(
        self,
        client: Redis,
        keys: Keys,
        preset: str,
        limits: IdentityLimits | None = None,
        *,
        clock: Callable[[], float] = time.time,
        wire: Wire | None = None,
    ) -> None:
        self.r = client
        self._wire = wire  # the read script's rows, read by the wire's small reader (redis-py's: several times the CPU)
        self.keys = keys
        self.preset = preset
        self.limits = limits or IdentityLimits()
        self._clock = clock
        self._seen = keys.identity_seen(preset)
        self._bytes = keys.identity_bytes(preset)
        self._evict = client.register_script(EVICT)
        self._merge = client.register_script(MERGE)
        self._read = client.register_script(READ)
        self._prefetched: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()

    def prefetch(self, slots: Sequence[tuple[str, str]]) -> None:
        """Read the entries of a worker's batch in one round trip; each ``recall`` of one answers from it once.

        For a worker whose intake writes identity before it queues the event (``serve --redis``): what the
        batch's events can be joined with is stored before they were read.
        """
        if not slots:
            return
        with reading("the identity memory"):
            # The read script, as merge_many: a pipeline of one HMGET each cost the worker twice the CPU.
            rows = self._rows([self._key(kind, ident) for kind, ident in slots])
        for slot, row in zip(slots, rows, strict=True):
            self._prefetched[slot] = row
            self._prefetched.move_to_end(slot)
        while len(self._prefetched) > PREFETCHED_MAX:
            self._prefetched.popitem(last=False)

    def _rows(self, names: list[str]) -> Any:
        """Each entry's four fields, by the read script."""
        if self._wire is None:
            return self._read(keys=names)
        (rows,) = self._wire.run_scripts([(self._read, evalsha(self._read, names, []))])
        if isinstance(rows, Exception):
            raise rows
        return rows

    def _key(self, slot_kind: str, ident: str) -> str:
        return self.keys.identity(self.preset, slot_kind, ident)

    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        self.merge_many([(slots, traits, owner)])

    def merge_many(self, merges: Sequence[tuple[Sequence[Slot], Mapping[str, Any], str | None]]) -> None:
        """Several merges, in order, as if one after the other, in the same two round trips as one.

        Every entry they touch is read once; the merges are applied to what
        was read, in order (a later identify of the same person merges over
        an earlier one); one script writes each entry's final state only if
        none changed since, and evicts. The intake does this for the
        identifies of a request: they cost a request two round trips, not
        two each.
        """
        named = [([(self._key(s.kind, s.ident), s) for s in slots], traits, owner) for slots, traits, owner in merges]
        slots_by_name: dict[str, Slot] = {}
        for pairs, _, _ in named:
            for name, slot in pairs:
                slots_by_name.setdefault(name, slot)
        if not slots_by_name:
            return
        self._stale(list(slots_by_name.values()))
        names = list(slots_by_name)
        with writing("the identity memory"):
            for _ in range(MAX_RETRIES):
                # One script reads them all: a pipeline of one HMGET each cost the client twice the CPU.
                rows = self._rows(names)
                now = self._clock()
                current = {
                    name: _remembered(row, now, self.limits.ttl_seconds) for name, row in zip(names, rows, strict=True)
                }
                for pairs, traits, owner in named:
                    for name, slot in pairs:
                        current[name] = merged(current[name], traits, owner, slot.exclusive)
                args: list[Any] = [self.limits.max_bytes, now - self.limits.ttl_seconds, PURGE_BATCH, now]
                for name, row in zip(names, rows, strict=True):
                    slot, new = slots_by_name[name], current[name]
                    assert new is not None  # every name read was merged into
                    text = traits_json(new.traits)
                    size = entry_bytes(slot.kind, slot.ident, new.owner, text)
                    args += [b"0" if value is None else b"1" + value for value in row]
                    args += [text, new.owner or "", size]
                if self._merge(keys=[self._seen, self._bytes, *names], args=args) == 0:
                    return
            raise WatchError("the identity entries kept changing")

    def _stale(self, slots: Sequence[Slot]) -> None:
        """What was read ahead for these slots is out of date once this process writes them."""
        for slot in slots:
            self._prefetched.pop((slot.kind, slot.ident), None)

    def recall(self, kind: str, ident: str) -> Remembered | None:
        row = self._prefetched.pop((kind, ident), None)  # once: a later recall asks Redis
        if row is None:
            with reading("the identity memory"):
                row = self.r.hmget(self._key(kind, ident), "traits", "owner", "bytes", "seen")
        now = self._clock()
        entry = _remembered(row, now, self.limits.ttl_seconds)
        seen = row[3]
        if entry is not None and seen is not None and now - float(seen) > TOUCH_SECONDS:
            name = self._key(kind, ident)
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
        self._stale(slots)
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

    def prefetch(self, slots: Sequence[tuple[str, str]]) -> None:
        self.inner.prefetch(slots)


def _remembered(row: Sequence[Any], now: float, ttl: float) -> Remembered | None:
    text, owner, _, seen = row
    if text is None or seen is None or now - float(seen) > ttl:
        return None
    owner_text = owner.decode("utf-8", "surrogatepass") if isinstance(owner, bytes) else owner
    return Remembered(json.loads(text), owner_text or None)
