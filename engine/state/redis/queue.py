"""The event queue on a Redis Stream, read by a consumer group: any number of workers, on any machine.

* ``append``: ``XADD``, every event of a request in one ``MULTI``; the intake
  answers 200 after it returns. How durable that is, is Redis's setting
  (``appendonly yes`` with ``appendfsync always`` or ``everysec``).
* ``read``: ``XREADGROUP ... >``, entries never handed out before.
* ``claim``: ``XAUTOCLAIM`` of entries idle longer than the visibility
  timeout: their worker died. A live worker renews its entries (``touch``,
  an ``XCLAIM`` of its own entries to itself), so only the dead lose theirs.
* ``ack``: in one ``MULTI``, the outcome is added to the capped outcome
  stream (``XADD ... MAXLEN ~``), the entry acknowledged (``XACK``) and
  deleted (``XDEL``). So an outcome is published exactly when its entry is
  acknowledged, and the stream's length is the backlog (what the intake's
  backpressure bound counts). One stream serves one preset's group.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ..errors import StateError, StateWriteError
from ..queue import QueuedEvent
from .keys import GROUP

OUTCOMES_MAXLEN = 100_000


class RedisQueue:
    def __init__(self, client: Redis, stream: str, outcomes: str | None = None, *, group: str = GROUP,
                 outcomes_maxlen: int = OUTCOMES_MAXLEN) -> None:
        self.r = client
        self.stream = stream
        self.outcomes = outcomes
        self.group = group
        self.outcomes_maxlen = outcomes_maxlen
        self._claim_cursor = "0-0"
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def append(self, bodies: Sequence[str]) -> None:
        if not bodies:
            return
        now = repr(time.time())
        try:
            async with self.r.pipeline(transaction=True) as pipe:
                for body in bodies:
                    pipe.xadd(self.stream, {"event": body, "at": now})
                await pipe.execute()
        except RedisError as exc:
            raise StateWriteError(f"redis: cannot queue the events ({type(exc).__name__})") from None

    async def backlog(self) -> int:
        try:
            return int(await self.r.xlen(self.stream))
        except RedisError as exc:
            raise StateError(f"redis: cannot read the queue ({type(exc).__name__})") from None

    async def read(self, consumer: str, count: int, block_seconds: float) -> list[QueuedEvent]:
        await self._ensure_group()
        answer = await self.r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count,
                                         block=max(1, int(block_seconds * 1000)) if block_seconds > 0 else None)
        entries: list[QueuedEvent] = []
        for _, items in answer or []:
            entries += [_entry(entry_id, fields, 1) for entry_id, fields in items if fields]
        return entries

    async def claim(self, consumer: str, min_idle_seconds: float, count: int) -> list[QueuedEvent]:
        await self._ensure_group()
        answer = await self.r.xautoclaim(self.stream, self.group, consumer, int(min_idle_seconds * 1000),
                                         start_id=self._claim_cursor, count=count)
        cursor, items = answer[0], answer[1]
        deleted = answer[2] if len(answer) > 2 else []
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if deleted:
            await self.r.xack(self.stream, self.group, *deleted)  # acknowledged and deleted already
        return [_entry(entry_id, fields, 2) for entry_id, fields in items if fields]

    async def touch(self, consumer: str, ids: Sequence[str]) -> None:
        if ids:
            await self._ensure_group()
            await self.r.xclaim(self.stream, self.group, consumer, 0, list(ids), justid=True)

    async def ack(self, done: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        if not done:
            return
        async with self.r.pipeline(transaction=True) as pipe:
            for entry_id, outcome in done:
                if self.outcomes is not None:
                    pipe.xadd(self.outcomes, {"outcome": json.dumps(outcome, ensure_ascii=False)},
                              maxlen=self.outcomes_maxlen, approximate=True)
                pipe.xack(self.stream, self.group, entry_id)
                pipe.xdel(self.stream, entry_id)
            await pipe.execute()

    async def pending(self) -> int:
        """Entries handed to a worker and not yet acknowledged."""
        await self._ensure_group()
        summary = await self.r.xpending(self.stream, self.group)
        return int(summary.get("pending", 0) if isinstance(summary, dict) else summary[0])

    async def close(self) -> None:
        await self.r.aclose()


def _entry(entry_id: Any, fields: Mapping[bytes, bytes], deliveries: int) -> QueuedEvent:
    ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    body = fields.get(b"event", b"")
    at = fields.get(b"at")
    return QueuedEvent(ident, body.decode("utf-8", "surrogatepass"), float(at) if at else 0.0, deliveries)
