"""The record of recent events in Redis: one capped Stream per integration.

``<prefix>:record:<integration>`` holds one entry per outcome in its field
``e`` (the full entry; the summary the console lists is read from it, or,
in entries written before, from their field ``s``).
Every add trims the stream to ``per_integration`` entries (``MAXLEN``) and
drops entries older than ``max_age_seconds`` (``MINID``: a stream id starts
with its time in milliseconds). ``<prefix>:record-names`` is the set of
integrations that have a stream. An entry's id is ``<integration>:<stream id>``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT, StreamRangeResponse

from ..errors import StateError
from ..record import DEFAULT_LIMITS, Recorded, RecordLimits, RecordQuery, TrimSchedule, summary_row, whole
from .keys import Keys
from .wire import Wire, encode, pack


class RedisRecord:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        limits: RecordLimits = DEFAULT_LIMITS,
        *,
        clock: Callable[[], float] = time.time,
        wire: Wire | None = None,
    ) -> None:
        self.client = client
        # The state's connection for packed commands (one of its own without): a batch's XADDs packed here
        # cost a third of redis-py's pipeline's CPU (a flush runs on the event loop's thread, as every
        # other user of the wire).
        self.wire = wire or Wire(client)
        self.keys = keys
        self.limits = limits
        self._clock = clock
        self._trims = TrimSchedule(limits)  # for the age only: MAXLEN keeps the count at every add
        self._named: set[str] = set()  # integrations this writer has added to the set of names

    def add_many(self, entries: Sequence[Recorded]) -> None:
        if not entries:
            return
        now = self._clock()
        try:
            answers = self._add(entries)
            late = [
                entry for entry, answer in zip(entries, answers, strict=True) if isinstance(answer, redis.ResponseError)
            ]
            new = {entry.integration for entry in entries} - self._named
            aged = self._trims.age_due(now)
            if not (late or new or aged):
                return  # one round trip: the common case
            pipe = self.client.pipeline(transaction=False)
            for entry in late:
                pipe.xadd(
                    self.keys.record(entry.integration),
                    _fields(entry),
                    maxlen=self.limits.per_integration,
                    approximate=False,
                )
            if new:
                pipe.sadd(self.keys.record_names(), *sorted(new))
            self._named |= new
            if aged:
                oldest = max(0, int((now - self.limits.max_age_seconds) * 1000))
                for name in sorted(self._named):
                    pipe.xtrim(self.keys.record(name), minid=oldest, approximate=False)
            pipe.execute()
        except redis.RedisError as exc:
            raise StateError(f"record: {type(exc).__name__}") from None

    def _add(self, entries: Sequence[Recorded]) -> list[Any]:
        """One XADD per entry, in one round trip; each answer an id, or the error Redis gave that entry.

        The id starts with the entry's own time, so the age limit and the figures' windows agree with
        "at"; an entry whose clock is behind the stream's newest is refused here and added again with
        the server's time. MAXLEN trims to the count as it adds (Redis's work, not this process's).
        """
        maxlen = encode(self.limits.per_integration)
        return self.wire.call(
            [
                pack(
                    b"XADD",
                    encode(self.keys.record(entry.integration)),
                    b"MAXLEN",
                    maxlen,
                    b"%d-*" % int(entry.at * 1000),
                    b"e",
                    encode(entry.entry),
                    *((b"s", encode(entry.summary)) if entry.summary else ()),
                )
                for entry in entries
            ]
        )

    def recent(self, query: RecordQuery) -> list[dict[str, Any]]:
        names = [query.integration] if query.integration else self.integrations()
        filtered = bool(query.outcome or query.reason or query.search)
        # A filter or a search reads the integration's stream newest first, at most all it keeps.
        count = self.limits.per_integration if filtered else query.limit
        rows = []
        for name in names:
            for stream_id, fields in _range(self.client.xrevrange(self.keys.record(name), count=count)):
                row = _summary(name, stream_id, fields)
                if query.matches(row):
                    rows.append(row)
                    if len(rows) >= query.limit * len(names):
                        break
        rows.sort(key=_newest, reverse=True)
        return rows[: query.limit]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        name, _, stream_id = str(entry_id).rpartition(":")
        if not name or not stream_id:
            return None
        try:
            found = _range(self.client.xrange(self.keys.record(name), min=stream_id, max=stream_id, count=1))
        except redis.ResponseError:
            return None  # not a stream id
        if not found:
            return None
        fields = found[0][1]
        return whole(fields.get(b"s", b""), fields[b"e"], entry_id)

    def since(self, cursor: str | None) -> tuple[list[dict[str, Any]], str]:
        names = self.integrations()
        try:
            last: dict[str, str] = json.loads(cursor) if cursor else {}
        except ValueError:
            last = {}
        if cursor is None or not isinstance(last, dict):
            last = {}
            for name in names:
                newest = _range(self.client.xrevrange(self.keys.record(name), count=1))
                last[name] = newest[0][0].decode() if newest else "0-0"
            return [], json.dumps(last)
        rows = []
        for name in names:
            start = last.get(name, "0-0")
            for stream_id, fields in _range(self.client.xrange(self.keys.record(name), min=f"({start}", count=500)):
                rows.append(_summary(name, stream_id, fields))
                last[name] = stream_id.decode()
        rows.sort(key=lambda r: r.get("at") or 0)
        return rows, json.dumps(last)

    def window(self, since: float) -> list[dict[str, Any]]:
        rows = []
        for name in self.integrations():
            for stream_id, fields in _range(self.client.xrange(self.keys.record(name), min=str(int(since * 1000)))):
                rows.append(_summary(name, stream_id, fields))
        return rows

    def integrations(self) -> list[str]:
        names = self.client.smembers(self.keys.record_names())
        return sorted(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def _newest(row: dict[str, Any]) -> tuple[float, int, int]:
    """A listed row's place: its time, then its stream id as numbers (as text, "-10" would sort before "-9")."""
    milliseconds, _, sequence = row["id"].rpartition(":")[2].partition("-")
    return (row.get("at") or 0, int(milliseconds), int(sequence or 0))


def _summary(name: str, stream_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    return summary_row(fields.get(b"s", b""), fields[b"e"], f"{name}:{stream_id.decode()}")


_Entries = list[tuple[bytes, dict[bytes, bytes]]]


def _range(found: StreamRangeResponse | None) -> _Entries:
    """A stream range as this client reads it: decode_responses is off, so ids, names and values are bytes, and
    XRANGE answers a list (the stubs allow str and None, as they must for every client)."""
    return cast(_Entries, found or [])


def _fields(entry: Recorded) -> dict[FieldT, EncodableT]:
    return {"e": entry.entry, "s": entry.summary} if entry.summary else {"e": entry.entry}
