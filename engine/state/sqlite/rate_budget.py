"""A rate window's budget kept in the state database, so a restart does not refill it.

The same rules as the in-process budget (:class:`engine.delivery.rate_limit.LocalBudget`)
and the Redis one, kept in a row of ``rate_budgets``: the next run on the same
``--state`` (or a ``dlq replay`` beside a ``run``) spends only what is left: the
bucket as it was, refilled only by the time that really passed, and the
destination's advertised ``Remaining`` until its reset.

Requests are reserved in small blocks, so a delivering process pays one
``BEGIN IMMEDIATE`` transaction per block rather than per request:

* **Never uncounted.** A block is counted in the row *when it is reserved*,
  before any of its requests goes: spent from the bucket or the advertised
  ``Remaining``, and in flight. A process killed with requests of its block
  unsent can only have wasted them (the next run sees a smaller budget
  until the bucket refills or the window resets), never sent one the row
  does not count.
* **Small, and smaller when scarce.** A block is at most ``RESERVE_MOST``
  requests and at most a ``1 / RESERVE_SHARE`` part of what is left, so
  below ``2 * RESERVE_SHARE`` it is one request: a scarce budget is shared
  between processes one request at a time, as it always was.
* **Short-lived.** A reservation is not used after ``RESERVE_SECONDS`` (nor
  past its window's reset). What was not sent is given back: on an event
  loop soon after it lapsed, else with this process's next write (its next
  reservation, a pause), and at the latest when the state is closed. So an
  idle process does not sit on budget another could use; a kill leaves it
  counted as spent, on the safe side.
* **Pauses.** A pause (a 429, ``Retry-After``) this process sees stops its
  spending at once: the rest of its block is given back in the pause's own
  transaction. A pause another process writes is seen at this process's
  next reservation, so at most ``RESERVE_MOST - 1`` requests (and at most
  ``RESERVE_SECONDS``) later, as a request on the wire is not called back
  either.
* **The destination's word.** Reserved requests are in flight in the row:
  the server's ``Remaining`` does not count them yet, so ``learn`` subtracts
  them as it does a request on the wire. An answer that says less is left
  than this process holds shrinks its block to a ``1 / RESERVE_SHARE`` part
  of that (giving the rest back with the lesson).

An answer's lesson (``learn``) rides in the next write transaction
(:meth:`Database.defer`). Times in the row are wall-clock seconds, so they
mean the same thing to the next process. Each budget reads them through its
engine's clock plus the wall-clock offset seen when it was opened, so an
engine on a fake clock spends its budget by that clock and never waits on
the real one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ...loggers import package_logger
from ..errors import StateError
from .database import Database

log = package_logger(__name__)

RETRY_SECONDS = 1.0  # when the database refuses a write: wait and ask again, never send uncounted
IDLE_SECONDS = 7 * 86400.0  # a budget nobody used for this long is forgotten when another is opened
RESERVE_MOST = 8  # requests one transaction reserves at most
RESERVE_SHARE = 8  # ... and at most this part of what is left (below 2 * this: one at a time)
RESERVE_SECONDS = 1.0  # a reservation older than this is not used (given back at the next write)
# A window whose end moved by less than this is the same window (a delta reset header read a
# moment later lands a little elsewhere); a window rolled over since a reservation no longer counts it.
WINDOW_SLACK = 2.0

_NAMES = ("tokens", "last", "remaining", "reset", "reset_raw", "paused_until", "in_flight")
_COLUMNS = ", ".join(_NAMES)
_SELECT = f"SELECT {_COLUMNS} FROM rate_budgets WHERE name = ?"
# An UPDATE of the row in place changes one page; INSERT OR REPLACE would delete and insert it,
# moving it in the name index too (two pages written to the WAL per request instead of one).
_UPDATE = f"UPDATE rate_budgets SET {', '.join(f'{n} = ?' for n in _NAMES)}, used_at = ? WHERE name = ?"
_INSERT = f"INSERT INTO rate_budgets (name, {_COLUMNS}, used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

# What a reservation was taken from: (from the bucket's tokens, the window's reset then).
Source = tuple[bool, float | None]


def block_size(available: float) -> int:
    """How many requests one reservation takes out of ``available`` (at least 1 is)."""
    return max(1, min(RESERVE_MOST, int(available // RESERVE_SHARE)))


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
        self._reserved = 0  # counted in the row, not sent yet: this process's to send
        self._reserved_until = 0.0  # (row time) not used after this
        self._source: Source = (False, None)
        self._blocks = 0  # blocks reserved so far: which one a lapse timer was armed for
        self._paused_until = 0.0  # this process's own pauses, kept even when the row could not take one
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
        if self._reserved and self._now() < self._reserved_until:
            self._reserved -= 1  # counted in the row when it was reserved
            return None
        now = self._now()
        if self._paused_until > now:
            return self._paused_until - now
        unsent, source = self._reserved, self._source
        try:
            with self.db.write() as cur:
                now = self._now()
                row = self._row(cur)
                self._give_back(row, unsent, source)  # a reservation that lapsed unspent
                wait, count, from_tokens = self._take(row, now)
                self._save(cur, row, now)
                reset = None if from_tokens else row["reset"]
        except StateError as exc:
            log.warning(
                "rate limit: cannot count a request in the state database (%s); waiting %.0fs",
                exc.strerror,
                RETRY_SECONDS,
            )
            return RETRY_SECONDS
        # Committed: the block is this process's. One of it goes now.
        self._reserved = count - 1 if wait is None else 0
        self._source = (from_tokens, row["reset"])
        # Not used for long, nor past the reset of the advertised window it was taken from.
        self._reserved_until = now + RESERVE_SECONDS if reset is None else min(now + RESERVE_SECONDS, reset)
        if self._reserved:
            self._blocks += 1
            self._arm_lapse()
        return wait

    def _arm_lapse(self) -> None:
        """On an event loop, a block this process leaves unspent goes back soon after it lapses.

        An idle process (a service between requests) would otherwise keep it
        counted until its next request. Without a loop it goes back at the
        next write or at close.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(RESERVE_SECONDS, self._lapse, self._blocks)

    def _lapse(self, block: int) -> None:
        if block != self._blocks or not self._reserved or self._now() < self._reserved_until:
            return  # spent, replaced, or (on an engine's own clock) not lapsed yet: the next write gives it back
        unsent, source = self._drop_reserve()
        self.db.defer(lambda cur: self._give_back_now(cur, unsent, source))

    def _take(self, row: dict[str, Any], now: float) -> tuple[float | None, int, bool]:
        """(None, requests reserved, from the bucket?) or (seconds to wait, 0, False), counted in ``row``."""
        paused = row["paused_until"] or 0.0
        if paused - now > 0:
            return float(paused - now), 0, False
        remaining, reset = row["remaining"], row["reset"]
        last = row["last"] if row["last"] is not None else now
        if remaining is not None and reset is not None and now >= reset:
            # The window has rolled over: its count says nothing about the next one.
            row.update(remaining=None, reset=None, in_flight=0)
            remaining, reset, last = None, None, now
        if remaining is not None:
            if remaining >= 1:
                count = block_size(remaining)
                row.update(remaining=remaining - count, in_flight=(row["in_flight"] or 0) + count)
                return None, count, False
            if reset is not None:
                return float(reset - now), 0, False
            row["remaining"] = None  # spent, and no reset advertised: pace by the bucket
        tokens = row["tokens"] if row["tokens"] is not None else self.capacity
        tokens = min(self.capacity, tokens + max(0.0, now - last) * self.rate)
        row.update(last=now)
        if tokens >= 1:
            count = block_size(tokens)
            row.update(tokens=tokens - count, in_flight=(row["in_flight"] or 0) + count)
            return None, count, True
        row["tokens"] = tokens
        return (1 - tokens) / self.rate, 0, False

    def _give_back(self, row: dict[str, Any], count: int, source: Source) -> None:
        """Return ``count`` requests reserved from ``source`` and never sent to ``row``."""
        if count <= 0:
            return
        from_tokens, reset = source
        if from_tokens and row["tokens"] is not None:
            row["tokens"] = min(self.capacity, row["tokens"] + count)
        if reset is not None and (row["reset"] is None or abs(row["reset"] - reset) >= WINDOW_SLACK):
            return  # the window rolled over since: the next one never counted them
        row["in_flight"] = max(0, int(row["in_flight"] or 0) - count)
        if row["remaining"] is not None:
            # Left over: reserved from it, or subtracted from the server's Remaining as in flight.
            row["remaining"] += count

    def _drop_reserve(self) -> tuple[int, Source]:
        """This process stops spending its block; what was left of it, to give back."""
        unsent, self._reserved = self._reserved, 0
        return unsent, self._source

    def learn(
        self, remaining: float | None, reset_raw: str | None, reset_in: float | None, window_in: float | None
    ) -> None:
        """Folded into the next write of the state database (usually the journal's, a moment later).

        Nothing is spent here, so nothing is lost by a kill before it lands:
        the request stays counted in flight, which only makes the budget the
        next run sees smaller (as for a request that was on the wire). When
        the answer says less is left than this process holds, its block
        shrinks at once, and the rest is given back with the lesson.
        """
        unsent, source = 0, self._source
        if remaining is not None and self._reserved:
            keep = max(0, min(self._reserved, int(remaining // RESERVE_SHARE)))
            unsent, self._reserved = self._reserved - keep, keep
        now = self._now()
        self.db.defer(lambda cur: self._learn(cur, now, unsent, source, remaining, reset_raw, reset_in, window_in))

    def _learn(
        self,
        cur: Any,
        now: float,
        unsent: int,
        source: Source,
        remaining: float | None,
        reset_raw: str | None,
        reset_in: float | None,
        window_in: float | None,
    ) -> None:
        row = self._row(cur)
        self._give_back(row, unsent, source)
        in_flight = max(0, int(row["in_flight"] or 0) - 1)
        row["in_flight"] = in_flight
        if remaining is not None:
            # The server's Remaining does not yet count the requests still in flight (reserved ones too).
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
        """Every process holds; this one's block is given back in the same transaction, unspent."""
        self._paused_until = max(self._paused_until, self._now() + max(0.0, seconds))
        unsent, source = self._drop_reserve()
        try:
            with self.db.write() as cur:
                now = self._now()
                row = self._row(cur)
                self._give_back(row, unsent, source)
                row["paused_until"] = max(row["paused_until"] or 0.0, now + max(0.0, seconds))
                self._save(cur, row, now)
        except StateError:
            pass  # this process holds by its own note; the block stays counted as spent

    def reset_in(self) -> float | None:
        self.db.flush_deferred()
        try:
            rows = self.db.read("SELECT reset FROM rate_budgets WHERE name = ?", (self.name,))
        except StateError:
            return None
        if not rows or rows[0][0] is None:
            return None
        return max(0.0, float(rows[0][0]) - self._now())

    def close(self) -> None:
        """Give back what this process reserved and did not send (best effort: else it counts as spent)."""
        unsent, source = self._drop_reserve()
        if not unsent:
            return
        try:
            with self.db.write() as cur:
                self._give_back_now(cur, unsent, source)
        except StateError:
            pass

    def _give_back_now(self, cur: Any, unsent: int, source: Source) -> None:
        row = self._row(cur)
        self._give_back(row, unsent, source)
        self._save(cur, row, self._now())
