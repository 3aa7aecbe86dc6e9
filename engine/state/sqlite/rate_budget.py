"""A rate window's budget kept in the state database, so a restart does not refill it.

The same rules as the in-process budget (:class:`engine.delivery.rate_limit.LocalBudget`)
and the Redis one, each call one ``BEGIN IMMEDIATE`` transaction on a row of
``rate_budgets``: what was spent is written *before* the request goes, so a
process killed right after sending has already counted it, and the next run
on the same ``--state`` (or a ``dlq replay`` beside a ``run``) spends only
what is left: the bucket as it was, refilled only by the time that really
passed, and the destination's advertised ``Remaining`` until its reset.

Times in the row are wall-clock seconds, so they mean the same thing to the
next process. Each budget reads them through its engine's clock plus the
wall-clock offset seen when it was opened, so an engine on a fake clock
spends its budget by that clock and never waits on the real one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...loggers import package_logger
from ..errors import StateError
from .database import Database

log = package_logger(__name__)

RETRY_SECONDS = 1.0  # when the database refuses a write: wait and ask again, never send uncounted
IDLE_SECONDS = 7 * 86400.0  # a budget nobody used for this long is forgotten when another is opened

_NAMES = ("tokens", "last", "remaining", "reset", "reset_raw", "paused_until", "in_flight")
_COLUMNS = ", ".join(_NAMES)
_SELECT = f"SELECT {_COLUMNS} FROM rate_budgets WHERE name = ?"
# An UPDATE of the row in place changes one page; INSERT OR REPLACE would delete and insert it,
# moving it in the name index too (two pages written to the WAL per request instead of one).
_UPDATE = f"UPDATE rate_budgets SET {', '.join(f'{n} = ?' for n in _NAMES)}, used_at = ? WHERE name = ?"
_INSERT = f"INSERT INTO rate_budgets (name, {_COLUMNS}, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


class SqliteRateBudget:
    """The :class:`~engine.delivery.rate_limit.RateBudget` of one window, in ``state.db``."""

    def __init__(
        self,
        db: Database,
        name: str,
        rate: float,
        capacity: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.name = name
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._offset = wall() - clock()
        try:
            with self.db.write() as cur:
                cur.execute(
                    "DELETE FROM rate_budgets WHERE used_at < ? AND name != ?", (self._now() - IDLE_SECONDS, name)
                )
        except StateError:
            pass  # forgetting old rows can wait for the next open

    def _now(self) -> float:
        return self._clock() + self._offset

    def _row(self, cur: Any) -> dict[str, Any]:
        found = cur.execute(_SELECT, (self.name,)).fetchone()
        return dict(zip(_NAMES, found, strict=True)) if found else dict.fromkeys(_NAMES) | {"in_flight": 0}

    def _save(self, cur: Any, row: dict[str, Any], now: float) -> None:
        values = (
            row["tokens"],
            row["last"],
            row["remaining"],
            row["reset"],
            row["reset_raw"],
            row["paused_until"],
            int(row["in_flight"] or 0),
            now,
        )
        if cur.execute(_UPDATE, (*values, self.name)).rowcount == 0:
            cur.execute(_INSERT, (self.name, *values))

    def take(self) -> float | None:
        try:
            with self.db.write() as cur:
                now = self._now()
                row = self._row(cur)
                wait = self._take(row, now)
                self._save(cur, row, now)
            return wait
        except StateError as exc:
            log.warning(
                "rate limit: cannot count a request in the state database (%s); waiting %.0fs",
                exc.strerror,
                RETRY_SECONDS,
            )
            return RETRY_SECONDS

    def _take(self, row: dict[str, Any], now: float) -> float | None:
        paused = row["paused_until"] or 0.0
        if paused - now > 0:
            return float(paused - now)
        remaining, reset = row["remaining"], row["reset"]
        last = row["last"] if row["last"] is not None else now
        if remaining is not None and reset is not None and now >= reset:
            # The window has rolled over: its count says nothing about the next one.
            row.update(remaining=None, reset=None, in_flight=0)
            remaining, reset, last = None, None, now
        if remaining is not None:
            if remaining >= 1:
                row.update(remaining=remaining - 1, in_flight=(row["in_flight"] or 0) + 1)
                return None
            if reset is not None:
                return float(reset - now)
            row["remaining"] = None  # spent, and no reset advertised: pace by the bucket
        tokens = row["tokens"] if row["tokens"] is not None else self.capacity
        tokens = min(self.capacity, tokens + max(0.0, now - last) * self.rate)
        row.update(last=now)
        if tokens >= 1:
            row.update(tokens=tokens - 1, in_flight=(row["in_flight"] or 0) + 1)
            return None
        row["tokens"] = tokens
        return (1 - tokens) / self.rate

    def learn(
        self, remaining: float | None, reset_raw: str | None, reset_in: float | None, window_in: float | None
    ) -> None:
        """Folded into the next write of the state database (usually the journal's, a moment later).

        Nothing is spent here, so nothing is lost by a kill before it lands:
        the request stays counted in flight, which only makes the budget the
        next run sees smaller (as for a request that was on the wire).
        """
        now = self._now()
        self.db.defer(lambda cur: self._learn(cur, now, remaining, reset_raw, reset_in, window_in))

    def _learn(
        self,
        cur: Any,
        now: float,
        remaining: float | None,
        reset_raw: str | None,
        reset_in: float | None,
        window_in: float | None,
    ) -> None:
        row = self._row(cur)
        in_flight = max(0, int(row["in_flight"] or 0) - 1)
        row["in_flight"] = in_flight
        if remaining is not None:
            # The server's Remaining does not yet count the requests still in flight.
            remaining = max(0.0, remaining - in_flight)
        if reset_in is not None:
            row["reset"] = now + reset_in
        if window_in is not None:
            if row["reset"] is None or row["reset"] <= now:
                row["reset"] = now + window_in
            reset_raw = f"window@{row['reset']}"
        if remaining is not None:
            same_window = reset_raw is not None and reset_raw == row["reset_raw"]
            if same_window and row["remaining"] is not None:
                remaining = min(row["remaining"], remaining)  # out-of-order answers: trust the lowest
            row["remaining"] = remaining
        if reset_raw is not None:
            row["reset_raw"] = reset_raw
        self._save(cur, row, now)

    def pause(self, seconds: float) -> None:
        try:
            with self.db.write() as cur:
                now = self._now()
                row = self._row(cur)
                row["paused_until"] = max(row["paused_until"] or 0.0, now + max(0.0, seconds))
                self._save(cur, row, now)
        except StateError:
            pass

    def reset_in(self) -> float | None:
        self.db.flush_deferred()
        try:
            rows = self.db.read("SELECT reset FROM rate_budgets WHERE name = ?", (self.name,))
        except StateError:
            return None
        if not rows or rows[0][0] is None:
            return None
        return max(0.0, float(rows[0][0]) - self._now())
