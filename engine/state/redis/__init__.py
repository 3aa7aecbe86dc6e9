"""The distributed state backend: every store in Redis, shared by any number of workers.

``RedisState(url)`` hands out the same store interfaces as the SQLite
backend (identity, journal, dead letters, tokens), plus the shared rate
budget. The stores are synchronous, like the SQLite ones, because the
pipeline that calls them is: one Redis round trip on loopback or a LAN is
about as long as a SQLite write. The queue and the per-event locks, which a
worker waits on, use the asyncio client (:meth:`RedisState.queue`).

Needs the ``redis`` package, imported only when a Redis backend is used.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio

from ..errors import StateError
from ..identity import IdentityLimits
from ..record import RecordLimits
from .dead_letters import RedisDeadLetters
from .deferred import DeferredCalls
from .identity import ReadOnlyIdentity, RedisIdentityStore
from .journal import LetterHints, RedisJournal
from .keys import DEFAULT_PREFIX, GROUP, Keys
from .locks import RedisKeyLocks
from .queue import RedisQueue
from .rate_budget import RedisRateBudget
from .record import RedisRecord
from .tokens import RedisTokenStore
from .wire import Wire

__all__ = [
    "Keys",
    "ReadOnlyIdentity",
    "RedisDeadLetters",
    "RedisIdentityStore",
    "RedisJournal",
    "RedisKeyLocks",
    "RedisQueue",
    "RedisRateBudget",
    "RedisRecord",
    "RedisState",
    "RedisTokenStore",
    "connect_check",
]

CONNECT_TIMEOUT = 5.0


class RedisState:
    """``identity_writes=False`` for a worker whose intake writes identity (see :class:`ReadOnlyIdentity`)."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, identity_writes: bool = True) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.identity_writes = identity_writes
        self.letter_hints = LetterHints()  # the journal's answer about a delivered event's letter, for discard
        try:
            self.client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30)
        except ValueError as exc:
            raise StateError(f"--redis {redact_url(url)}: {exc}") from None
        # One connection for packed commands (a worker's per-lead calls, its queue reads and acknowledgements): all
        # synchronous, on one thread, so they never interleave.
        self.wire = Wire(self.client)
        self.deferred = DeferredCalls(self.client, self.wire)  # writes that go with the next round trip (the learn)

    def identity(self, preset: str, limits: IdentityLimits) -> Any:
        store = RedisIdentityStore(self.client, self.keys, preset, limits, wire=self.wire)
        return store if self.identity_writes else ReadOnlyIdentity(store)

    def journal(self, preset: str, window_seconds: float) -> RedisJournal:
        return RedisJournal(
            self.client, self.keys, preset, window_seconds, hints=self.letter_hints, deferred=self.deferred
        )

    def dead_letters(self) -> RedisDeadLetters:
        return RedisDeadLetters(self.client, self.keys, self.letter_hints)

    def tokens(self, client_id: str) -> RedisTokenStore:
        return RedisTokenStore(self.client, self.keys, client_id)

    def rate_budget(self, name: str, rate: float, capacity: float, clock: object = None) -> RedisRateBudget:
        """``clock`` is not used: the budget is timed by the Redis server's clock, one for every worker."""
        return RedisRateBudget(self.client, self.keys, name, rate, capacity, self.deferred)

    def record(self, limits: RecordLimits = RecordLimits()) -> RedisRecord:  # noqa: B008 - frozen
        """The record of recent events the console reads (see :mod:`engine.state.record`)."""
        return RedisRecord(self.client, self.keys, limits, wire=self.wire)

    def console_integrations(self) -> Any:
        """Integrations created in the console (one hash; secrets sealed, see :mod:`engine.state.console_integrations`)."""
        from .console_integrations import RedisIntegrationStore

        return RedisIntegrationStore(self.client, self.keys)

    def async_client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30)

    def queue(
        self,
        preset: str,
        client: redis.asyncio.Redis | None = None,
        *,
        stream: str | None = None,
        group: str | None = None,
        start: str = "0",
        trim_seconds: float = 0.0,
    ) -> RedisQueue:
        """``preset`` (or an integration's name) names the outcome stream; ``stream`` the events' (default: the
        preset's own), ``group`` the consumer group (an integration's name)."""
        return RedisQueue(
            client or self.async_client(),
            stream or self.keys.events(preset),
            self.keys.outcomes(preset),
            group=group or GROUP,
            start=start,
            trim_seconds=trim_seconds,
            wire=self.wire,
        )

    def locks(self, client: redis.asyncio.Redis, owner: str, seconds: float) -> RedisKeyLocks:
        return RedisKeyLocks(client, owner, seconds, wire=self.wire)

    def check(self) -> None:
        """Fail before serving when Redis cannot be reached: one line naming the server, never its password."""
        try:
            self.client.ping()
        except (redis.RedisError, OSError) as exc:
            raise StateError(f"--redis {redact_url(self.url)}: cannot connect ({type(exc).__name__})") from None

    def close(self) -> None:
        try:
            self.deferred.flush()
        except (redis.RedisError, OSError):
            pass  # what the budget learnt last: the next answer teaches it again
        self.wire.close()
        self.client.close()


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect_check(url: str) -> None:
    RedisState(url).check()
