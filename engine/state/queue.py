"""The event queue between the intake and the workers: a durable log with leases.

The intake appends what it answered 200 for; workers read entries, process
them and acknowledge each one only once its outcome is recorded. An entry a
worker read but never acknowledged (it died) is leased to another worker
after ``min_idle`` seconds (``claim``). So an entry is processed at least
once, and the delivery journal makes a repeat harmless.

Two implementations: the embedded SQLite one (:mod:`engine.state.sqlite.queue`,
one process) and Redis Streams with a consumer group
(:mod:`engine.state.redis.queue`, any number of workers). A Kafka consumer
would be a third: ``read`` is a poll, ``ack`` a commit of the offsets up to
the entry (outcomes arrive in order), ``claim`` the group's rebalance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class QueuedEvent:
    """One entry: its id in the queue, the event's JSON text and when the intake queued it.

    ``problem`` says why an entry cannot be read as text (another writer put
    bytes that are not UTF-8 there): the worker gives it an ``invalid_event``
    outcome and acknowledges it, so one bad entry never holds up the others.
    ``failure`` is the error a worker stopped on while it held this entry,
    if one did (see ``deliveries``: a poison entry fails every worker).
    """

    id: str
    body: str
    enqueued_at: float  # epoch seconds
    deliveries: int = 1  # how many times it was handed to a worker, this time included
    failure: str | None = None
    problem: str | None = None


class EventQueue(Protocol):
    """Async, because a worker waits on it; every call is atomic on its own."""

    async def append(self, bodies: Sequence[str]) -> None:
        """Queue events (JSON texts), all or none, durably before returning."""

    async def backlog(self) -> int:
        """Entries queued and not yet acknowledged (the intake's backpressure bound)."""

    async def read(self, consumer: str, count: int, block_seconds: float) -> list[QueuedEvent]:
        """Up to ``count`` entries never handed out before, leased to ``consumer``; waits up to ``block_seconds``."""

    async def claim(self, consumer: str, min_idle_seconds: float, count: int) -> list[QueuedEvent]:
        """Entries another consumer leased and left idle that long (it died), leased to ``consumer`` now."""

    async def touch(self, consumer: str, ids: Sequence[str]) -> None:
        """Renew the leases of entries still being worked on, so nobody claims them."""

    async def ack(self, done: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Acknowledge entries, each with its outcome (published where the queue keeps outcomes), atomically."""

    async def release(self, consumer: str, entries: Sequence[QueuedEvent]) -> None:
        """Give back entries ``consumer`` was handed and will not work on now, without counting that delivery."""

    async def fail(self, consumer: str, ids: Sequence[str], error: str) -> None:
        """Note on entries ``consumer`` holds the error it is stopping on (a poison entry's letter carries it)."""

    async def writable(self) -> bool:
        """Whether a write would be taken now (a small real write: a full disk or a read-only store says no)."""

    async def close(self) -> None: ...
