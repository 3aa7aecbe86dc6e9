"""The event queue on a Redis Stream, read by a consumer group: any number of workers, on any machine.

* ``append``: ``XADD``, every event of a request in one Lua script (one
  command, one round trip, applied as a whole like a ``MULTI``, and about a
  third of the client's CPU of one ``XADD`` per event); the intake answers
  200 after it returns. How durable that is, is Redis's setting
  (``appendonly yes`` with ``appendfsync always`` or ``everysec``).
  ``append_within`` does the same unless the stream would pass the
  intake's backlog bound, checked inside the script: one round trip.
* ``read``: ``XREADGROUP ... >``, entries never handed out before. With a
  :class:`~.wire.Wire` (a worker's queue), a read that finds entries, and
  each acknowledgement, is a packed command on a synchronous connection of
  its own, its answer read by the wire's small reader: redis-py's asyncio
  parser spends more CPU on a batch of 64 entries than the worker spends on
  some of the leads in it. Only a read that finds nothing waits (``BLOCK``)
  on the asyncio client, so an idle worker never holds the event loop.
* ``claim``: ``XAUTOCLAIM`` of entries idle longer than the visibility
  timeout: their worker died. A live worker renews its entries (``touch``,
  an ``XCLAIM`` of its own entries to itself), so only the dead lose theirs.
* ``ack``: in one script (one round trip, applied as a whole like a
  ``MULTI``), the outcome is added to the capped outcome stream (``XADD ...
  MAXLEN ~``), the entry acknowledged (``XACK``), its failure note cleared
  and, when asked, the worker's lock on the event released (only if it is
  still that worker's). So an outcome is published exactly when its entry
  is acknowledged, and the event's lock goes in the same step.
* One stream, one consumer group per integration (Kafka's model: one topic,
  many groups): each integration has its own position and pending entries.
  An entry stays in the stream until every group is past it; ``ack`` then
  trims the stream (``XTRIM MINID``, at most every ``trim_seconds``) to the
  oldest entry some group still needs. So the stream's length is the backlog
  of the slowest integration, what the intake's backpressure bound counts.
* Each entry is decoded on its own: an entry another writer ``XADD``-ed with
  bytes that are not UTF-8 comes back with a ``problem``, and the rest of its
  batch is read as usual.
* ``fail``: a worker stopping on an error notes it on the entries it holds
  (``<stream>:<group>:failures``, cleared with the acknowledgement); ``claim``
  hands it back with the entry's delivery count (``XPENDING``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import orjson

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ..errors import StateError, StateWriteError
from ..queue import QueuedEvent
from .keys import GROUP
from .wire import Wire, encode, evalsha, pack

OUTCOMES_MAXLEN = 100_000
RELEASED_IDLE_MS = 10 * 365 * 86_400_000  # idle "for years": the next claim of any worker takes it

# KEYS[1] the stream; ARGV[1] the time queued, then one body per event. Scripts run whole, like MULTI.
APPEND = """
local at = ARGV[1]
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[i], 'at', at)
end
return #ARGV - 1
"""

# KEYS: the stream, its failures, the outcome stream (the stream again when there is none), then locks to release.
# ARGV: group, outcome stream's MAXLEN ('' = none), the locks' owner, then each entry's id and outcome.
ACK = """
local group, maxlen, owner = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV, 2 do
  if maxlen ~= '' then redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', 'outcome', ARGV[i + 1]) end
  redis.call('XACK', KEYS[1], group, ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
for i = 4, #KEYS do
  if redis.call('GET', KEYS[i]) == owner then redis.call('DEL', KEYS[i]) end
end
return (#ARGV - 3) / 2
"""


# The same, unless the stream would pass a bound: KEYS[1] the stream; ARGV[1] the bound, ARGV[2] the time,
# then the bodies. Returns how many were added, or -1 - the stream's length when nothing was (over the bound).
APPEND_WITHIN = """
local backlog = redis.call('XLEN', KEYS[1])
if backlog + #ARGV - 2 > tonumber(ARGV[1]) then
  return -1 - backlog
end
local at = ARGV[2]
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[i], 'at', at)
end
return #ARGV - 2
"""


class RedisQueue:
    def __init__(
        self,
        client: Redis,
        stream: str,
        outcomes: str | None = None,
        *,
        group: str = GROUP,
        outcomes_maxlen: int = OUTCOMES_MAXLEN,
        start: str = "0",
        trim_seconds: float = 0.0,
        wire: Wire | None = None,
    ) -> None:
        self.r = client
        self._wire = wire  # reads that find entries, and acknowledgements (see the module's docstring)
        self._reads: dict[tuple[str, int], bytes] = {}  # XREADGROUP without BLOCK, packed once per consumer
        self.stream = stream
        self.outcomes = outcomes
        self.group = group
        self.outcomes_maxlen = outcomes_maxlen
        # entry id -> the error a worker of this group stopped on while holding it
        self.failures = f"{stream}:{group}:failures"
        self.start = start  # where a group created here starts: "0" the whole stream, "$" what comes next
        self.trim_seconds = trim_seconds
        self._claim_cursor = "0-0"
        self._group_ready = False
        self._trimmed_at = 0.0
        self._append = client.register_script(APPEND)
        self._append_within = client.register_script(APPEND_WITHIN)
        self._ack = client.register_script(ACK)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        await create_group(self.r, self.stream, self.group, self.start)
        self._group_ready = True

    async def append(self, bodies: Sequence[str]) -> None:
        if not bodies:
            return
        now = repr(time.time())
        try:
            await self._append(keys=[self.stream], args=[now, *bodies])
        except RedisError as exc:
            raise StateWriteError(f"redis: cannot queue the events ({type(exc).__name__})") from None

    async def append_within(self, bodies: Sequence[str], bound: int) -> int | None:
        """Append unless the backlog would then pass ``bound``: None when appended, else the backlog (nothing
        was written). The check and the append are one script: one round trip, and no other writer between."""
        now = repr(time.time())
        try:
            added = int(await self._append_within(keys=[self.stream], args=[bound, now, *bodies]))
        except RedisError as exc:
            raise StateWriteError(f"redis: cannot queue the events ({type(exc).__name__})") from None
        return None if added >= 0 else -1 - added

    async def backlog(self) -> int:
        try:
            return int(await self.r.xlen(self.stream))
        except RedisError as exc:
            raise StateError(f"redis: cannot read the queue ({type(exc).__name__})") from None

    async def read(self, consumer: str, count: int, block_seconds: float) -> list[QueuedEvent]:
        await self._ensure_group()
        if self._wire is not None:
            waiting = self._read_now(consumer, count)
            if waiting:
                return waiting
        answer = await self.r.xreadgroup(
            self.group,
            consumer,
            {self.stream: ">"},
            count=count,
            block=max(1, int(block_seconds * 1000)) if block_seconds > 0 else None,
        )
        entries: list[QueuedEvent] = []
        # RESP2, the client's protocol: a list of [stream, entries] (the stubs also allow RESP3's map).
        for _, items in cast("list[list[Any]] | None", answer) or []:
            entries += [_entry(entry_id, fields, 1) for entry_id, fields in items if fields]
        if not entries and self.trim_seconds > 0:
            await self._trim()  # idle: what the last acknowledgements left untrimmed goes now
        return entries

    def _read_now(self, consumer: str, count: int) -> list[QueuedEvent]:
        """What is waiting, without waiting: one packed ``XREADGROUP`` on the wire."""
        assert self._wire is not None
        command = self._reads.get((consumer, count))
        if command is None:
            parts: list[bytes | str | int] = ["XREADGROUP", "GROUP", self.group, consumer, "COUNT", count]
            command = self._reads[(consumer, count)] = pack(*map(encode, [*parts, "STREAMS", self.stream, ">"]))
        (answer,) = self._wire.call([command])
        if isinstance(answer, Exception):
            raise answer
        # RESP3 answers a map of stream -> entries, RESP2 a list of [stream, entries]; nothing waiting: nil.
        streams = answer.values() if isinstance(answer, dict) else [items for _, items in answer or []]
        return [
            _entry(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)), 1)
            for items in streams
            for entry_id, fields in items
            if fields
        ]

    async def claim(self, consumer: str, min_idle_seconds: float, count: int) -> list[QueuedEvent]:
        await self._ensure_group()
        answer = await self.r.xautoclaim(
            self.stream, self.group, consumer, int(min_idle_seconds * 1000), start_id=self._claim_cursor, count=count
        )
        cursor, items = answer[0], answer[1]
        deleted = answer[2] if len(answer) > 2 else []
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if deleted:
            await self.r.xack(self.stream, self.group, *deleted)  # acknowledged and deleted already
        items = [(entry_id, fields) for entry_id, fields in items if fields]
        if not items:
            return []
        # How often each was handed out (XAUTOCLAIM counted this time) and what its workers stopped on.
        async with self.r.pipeline(transaction=False) as pipe:
            for entry_id, _ in items:
                pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            pipe.hmget(self.failures, [entry_id for entry_id, _ in items])
            *pending, failures = await pipe.execute()
        return [
            _entry(entry_id, fields, _times_delivered(info, 2), failure)
            for (entry_id, fields), info, failure in zip(items, pending, failures, strict=True)
        ]

    async def touch(self, consumer: str, ids: Sequence[str]) -> None:
        if ids:
            await self._ensure_group()
            await self.r.xclaim(self.stream, self.group, consumer, 0, list(ids), justid=True)

    async def release(self, consumer: str, entries: Sequence[QueuedEvent]) -> None:
        if not entries:
            return
        await self._ensure_group()
        async with self.r.pipeline(transaction=False) as pipe:
            for entry in entries:
                # Kept in the group's pending list, its count set back and idle long enough to be claimed now.
                pipe.xclaim(
                    self.stream,
                    self.group,
                    consumer,
                    0,
                    [entry.id],
                    idle=RELEASED_IDLE_MS,
                    retrycount=max(0, entry.deliveries - 1),
                    justid=True,
                )
            await pipe.execute()
        self._claim_cursor = "0-0"

    async def fail(self, consumer: str, ids: Sequence[str], error: str) -> None:
        if ids:
            await self.r.hset(self.failures, mapping={i: error.encode("utf-8", "backslashreplace") for i in ids})

    async def writable(self) -> bool:
        try:
            await self.r.set(f"{self.stream}:probe", repr(time.time()), px=60_000)
        except (RedisError, OSError):
            return False
        return True

    # The worker may hand its event locks to ack (RedisKeyLocks): released in the acknowledgement's round trip.
    acks_locks = True

    async def ack(
        self, done: Sequence[tuple[str, Mapping[str, Any]]], *, unlock: Sequence[str] = (), owner: str = ""
    ) -> None:
        """Publish each outcome and acknowledge its entry; release ``unlock`` (locks ``owner`` holds) with them."""
        if not done:
            return
        args: list[bytes | str] = [self.group, str(self.outcomes_maxlen) if self.outcomes is not None else "", owner]
        for entry_id, outcome in done:
            args += [entry_id, _outcome_text(outcome) if self.outcomes is not None else ""]
        streams = [self.stream, self.failures, self.outcomes if self.outcomes is not None else self.stream]
        if self._wire is not None:
            (answer,) = self._wire.run_scripts([(self._ack, evalsha(self._ack, [*streams, *unlock], args))])
            if isinstance(answer, Exception):
                raise answer
        else:
            await self._ack(keys=[*streams, *unlock], args=args)
        await self._trim()

    async def _trim(self, force: bool = False) -> None:
        """At most every ``trim_seconds`` (after acknowledgements, when idle), and once more on close."""
        if force or time.monotonic() - self._trimmed_at >= self.trim_seconds:
            self._trimmed_at = time.monotonic()
            await trim(self.r, self.stream)

    async def lag(self) -> int:
        """Entries this group has not finished: those pending, and those not yet read."""
        for group in await self.r.xinfo_groups(self.stream):
            if _text(group.get("name")) == self.group:
                lag = group.get("lag")
                pending = int(group.get("pending") or 0)
                if lag is None:  # Redis cannot tell (entries deleted inside the range): count them
                    last = _text(group.get("last-delivered-id")) or "0-0"
                    lag = len(await self.r.xrange(self.stream, min=f"({last}", max="+") or [])
                return pending + int(lag)
        return 0

    async def pending(self) -> int:
        """Entries handed to a worker and not yet acknowledged."""
        await self._ensure_group()
        summary = await self.r.xpending(self.stream, self.group)
        return int(summary.get("pending", 0) if isinstance(summary, dict) else summary[0])

    async def close(self) -> None:
        if self._group_ready and self.trim_seconds > 0:
            with contextlib.suppress(RedisError, OSError):  # the next worker trims
                await self._trim(force=True)
        await self.r.aclose()


async def create_group(client: Redis, stream: str, group: str, start: str) -> bool:
    """The group, created at ``start`` unless it exists; True when it was created now."""
    try:
        await client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


async def groups(client: Redis, stream: str) -> list[str]:
    try:
        return [_text(g.get("name")) for g in await client.xinfo_groups(stream)]
    except ResponseError:  # no such stream yet
        return []


async def trim(client: Redis, stream: str) -> None:
    """Drop the entries every group is done with: older than each group's oldest pending entry, and
    than the first entry it has not read."""
    try:
        info = await client.xinfo_groups(stream)
    except ResponseError:
        return
    if not info:
        return
    bound: tuple[int, int] | None = None
    for group in info:
        if int(group.get("pending") or 0) > 0:
            summary = await client.xpending(stream, _text(group.get("name")))
            oldest = summary.get("min") if isinstance(summary, dict) else summary[1]
            if oldest is None:
                continue
            need = _id(_text(oldest))
        else:
            ms, seq = _id(_text(group.get("last-delivered-id")) or "0-0")
            need = (ms, seq + 1)
        bound = need if bound is None or need < bound else bound
    if bound is not None and bound > (0, 1):
        await client.xtrim(stream, minid=f"{bound[0]}-{bound[1]}", approximate=False)


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value) if value is not None else ""


def _entry(entry_id: Any, fields: Mapping[bytes, bytes], deliveries: int, failure: bytes | None = None) -> QueuedEvent:
    """One entry, decoded on its own: bytes another writer put there that are not UTF-8 make *this* entry
    a problem (an ``invalid_event`` once the worker sees it), never its whole batch."""
    ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    note = failure.decode("utf-8", "replace") if isinstance(failure, bytes) else None
    raw = fields.get(b"event")
    problem = None
    body = ""
    if raw is None:
        problem = "the queued entry has no 'event' field"
    else:
        try:
            body = raw.decode("utf-8", "surrogatepass")  # a lone surrogate is escaped by the worker
        except UnicodeDecodeError as exc:
            problem = f"the queued entry is not UTF-8 text (byte {exc.start} of its 'event' field)"
    return QueuedEvent(ident, body, _seconds(fields.get(b"at")), deliveries, failure=note, problem=problem)


def _seconds(value: bytes | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0  # another writer's timestamp: only the latency metric uses it


def _times_delivered(info: Any, default: int) -> int:
    try:
        return int(info[0]["times_delivered"])
    except (LookupError, TypeError, ValueError):
        return default


def _outcome_text(outcome: Mapping[str, Any]) -> bytes | str:
    """The outcome as compact UTF-8 JSON (orjson, as ``run`` prints it: some 0.5 µs where the stdlib encoder took 10),
    whatever it holds: a lone surrogate, an integer beyond 64 bits or a value orjson does not know is
    written by the stdlib, as \\uXXXX escapes where needed (else the ack would fail forever)."""
    try:
        return orjson.dumps(outcome)
    except TypeError:
        return json.dumps(outcome, default=str, separators=(",", ":"))  # \uXXXX escapes: still the same JSON
