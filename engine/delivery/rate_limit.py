"""Client-side rate limiting, with the destination's own headers as the authority.

* When the destination advertises its budget (``Remaining`` and when the
  window resets), that is what the limiter spends: every request it says
  is left, and not one more; when the window is spent, every sender waits
  for the advertised reset, and resumes exactly then. The quota is shared
  with every other app acting as the same user, so only the server knows.
* Before the first answer, after a window has passed, or for a destination
  that advertises nothing, a token bucket at the preset's conservative rate
  is the ceiling, so a backlog is paced rather than dumped.

A 429 pauses *all* sends until the reset, not just the request that got it.

A preset may declare several windows (``rate_limit.windows``: a daily budget
beside a burst limit). Each is a limiter of its own, with its own figures and
headers, and a request goes only when every one of them lets it: the
tightest window governs at each moment.

What may be spent (the bucket, the window, a pause) is a :class:`RateBudget`:
this process's own, or one that every worker of a connection shares, so N
workers together spend the destination's budget once, not N times.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..language.model import RateLimitSpec

Sleep = Callable[[float], Awaitable[None]]

# Epoch seconds are > 1e9; anything smaller in a reset header is a delay.
# Above 1e12 it can only be epoch milliseconds (the unit is not documented).
_EPOCH_THRESHOLD = 1_000_000_000
_EPOCH_MS_THRESHOLD = 1_000_000_000_000
MIN_WAIT_SECONDS = 0.001  # below this a float clock may not move: never spin
MAX_WAIT_SECONDS = 3600.0


def first_number(value: str | None) -> float | None:
    """The first number of a header such as ``"9999, 19988"`` (Outreach's two-value form)."""
    if value is None:
        return None
    head = value.split(",")[0].strip()
    try:
        return float(head)
    except ValueError:
        return None


def seconds_until(value: str | None, now_wall: float | None = None) -> float | None:
    """Parse ``Retry-After`` or a reset header: delay seconds, epoch seconds, an HTTP date or an ISO timestamp."""
    if value is None or not value.strip():
        return None
    now_wall = time.time() if now_wall is None else now_wall
    number = first_number(value)
    if number is not None:
        if number >= _EPOCH_MS_THRESHOLD:
            number /= 1000.0
        delay = number - now_wall if number >= _EPOCH_THRESHOLD else number
        return max(0.0, min(delay, MAX_WAIT_SECONDS))
    text = value.strip()
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, min(when.timestamp() - now_wall, MAX_WAIT_SECONDS))


def header_value(headers: Mapping[str, str], name: str | None, key: str | None = None) -> str | None:
    """A header's value, or with ``key`` one ``key=value`` item of it (``limit=20, remaining=19, reset=1``)."""
    if not name:
        return None
    value = headers.get(name)
    if value is None or key is None:
        return value
    for item in re.split(r"[,;]", value):
        name_part, sep, item_value = item.partition("=")
        if sep and name_part.strip().lower() == key.lower():
            return item_value.strip().strip('"')
    return None


def reset_seconds(value: str | None, fmt: str, now_wall: float | None = None) -> float | None:
    """Seconds until a reset header's moment, read the way the preset declares it is written."""
    if value is None or not value.strip():
        return None
    now_wall = time.time() if now_wall is None else now_wall
    if fmt == "http_date":
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = when.timestamp() - now_wall
    else:
        number = first_number(value)
        if number is None:
            return None
        delay = {
            "epoch_seconds": number - now_wall,
            "epoch_milliseconds": number / 1000.0 - now_wall,
            "delta_seconds": number,
        }.get(fmt, number - now_wall)
    return max(0.0, min(delay, MAX_WAIT_SECONDS))


def bucket_shape(requests: int, per_seconds: float) -> tuple[float, float]:
    """The preset's ceiling as a token bucket: (refill rate per second, capacity).

    A minute's worth of burst: enough for a handful of leads to go out at
    once, small enough that a backlog is paced rather than dumped.
    """
    rate = requests / per_seconds
    return rate, max(1.0, min(float(requests), rate * 60))


class RateBudget(Protocol):
    """What one connection may still spend: the bucket, the server's window and a pause.

    :class:`LocalBudget` keeps it in this process; a shared budget (one per
    destination connection for every worker, e.g. in Redis) implements the
    same four calls, each atomic on its own, against its own clock. Times
    cross this interface as *seconds from now*, so two clocks never mix.
    """

    capacity: float

    def take(self) -> float | None:
        """Spend one request now: None when it was taken, else the seconds to wait before asking again."""

    def learn(
        self, remaining: float | None, reset_raw: str | None, reset_in: float | None, window_in: float | None
    ) -> None:
        """Close one taken request and learn the server's view from its answer (all None: no answer)."""

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds``."""

    def reset_in(self) -> float | None:
        """Seconds until the server's window ends, when known."""


class LocalBudget:
    """The budget of one process: a token bucket, the server's advertised window, a pause."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self._clock = clock
        self._last = clock()
        self._paused_until = 0.0
        self._server_remaining: float | None = None
        self._server_reset: float | None = None  # this clock's time of the server window's end
        self._server_reset_raw: str | None = None
        self._in_flight = 0  # taken, answer not yet learnt

    def take(self) -> float | None:
        now = self._clock()
        wait = self._paused_until - now
        if wait > 0:
            return wait
        if self._server_budget_known(now):
            assert self._server_remaining is not None
            if self._server_remaining >= 1:
                self._server_remaining -= 1  # spent as soon as it is sent
                self._in_flight += 1
                return None
            if self._server_reset is not None:
                return self._server_reset - now
            self._server_remaining = None  # spent, and no reset advertised: pace by the bucket
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1:
            self.tokens -= 1
            self._in_flight += 1
            return None
        return (1 - self.tokens) / self.rate

    def _server_budget_known(self, now: float) -> bool:
        """True while the destination's advertised window is current."""
        if self._server_remaining is None:
            return False
        if self._server_reset is not None and now >= self._server_reset:
            # The window has rolled over: its count says nothing about the next one.
            self._server_remaining = None
            self._server_reset = None
            self._last = now  # the bucket did not fill while the server governed
            return False
        return True

    def learn(
        self, remaining: float | None, reset_raw: str | None, reset_in: float | None, window_in: float | None
    ) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        if remaining is not None:
            # The server's Remaining does not yet count the requests still in flight.
            remaining = max(0.0, remaining - self._in_flight)
        now = self._clock()
        if reset_in is not None:
            self._server_reset = now + reset_in
        if window_in is not None:
            # Only the window's length is known: the window began at most now, so
            # now + length is a reset that is never early.
            if self._server_reset is None or self._server_reset <= now:
                self._server_reset = now + window_in
            reset_raw = f"window@{self._server_reset}"
        if remaining is not None:
            same_window = reset_raw is not None and reset_raw == self._server_reset_raw
            if same_window and self._server_remaining is not None:
                # Answers to concurrent requests arrive out of order: trust the lowest.
                self._server_remaining = min(self._server_remaining, remaining)
            else:
                self._server_remaining = remaining
        if reset_raw is not None:
            self._server_reset_raw = reset_raw

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    def reset_in(self) -> float | None:
        return None if self._server_reset is None else max(0.0, self._server_reset - self._clock())


class RateLimiter:
    """Shared by every request of one engine (one destination connection).

    The waiting (in order, on the event loop) happens here; what may be
    spent is the ``budget``'s to say: this process's own by default, or one
    shared by every worker of a connection.
    """

    @classmethod
    def from_spec(
        cls,
        spec: RateLimitSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        budget: RateBudget | None = None,
        window_budgets: list[RateBudget | None] | None = None,
    ) -> RateLimiter:
        """``window_budgets``: the shared budget of each of ``spec.windows`` (None: this process's own)."""
        shared = list(window_budgets or [])
        windows = [
            cls.from_spec(window, clock=clock, sleep=sleep, budget=shared[i] if i < len(shared) else None)
            for i, window in enumerate(spec.windows)
        ]
        return cls(
            spec.requests,
            spec.per_seconds,
            remaining_header=spec.remaining_header,
            reset_header=spec.reset_header,
            reset_format=spec.reset_format,
            window_header=spec.window_header,
            window_unit=spec.window_unit,
            remaining_key=spec.remaining_key,
            reset_key=spec.reset_key,
            window_seconds=spec.window_seconds,
            window_alignment=spec.window_alignment,
            clock=clock,
            sleep=sleep,
            budget=budget,
            windows=windows,
        )

    def __init__(
        self,
        requests: int,
        per_seconds: float,
        *,
        remaining_header: str | None = None,
        reset_header: str | None = None,
        reset_format: str = "epoch_seconds",
        window_header: str | None = None,
        window_unit: str = "seconds",
        remaining_key: str | None = None,
        reset_key: str | None = None,
        window_seconds: float | None = None,
        window_alignment: str = "rolling",
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        budget: RateBudget | None = None,
        windows: list[RateLimiter] | None = None,
    ) -> None:
        self.rate, capacity = bucket_shape(requests, per_seconds)
        self.budget: RateBudget = budget if budget is not None else LocalBudget(self.rate, capacity, clock)
        self.remaining_header = remaining_header
        self.reset_header = reset_header
        self.reset_format = reset_format
        self.window_header = window_header
        self.window_scale = 0.001 if window_unit == "milliseconds" else 1.0
        self.remaining_key = remaining_key
        self.reset_key = reset_key
        self.window_seconds = window_seconds
        self.window_alignment = window_alignment
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self.waited_seconds = 0.0
        self.windows: list[RateLimiter] = list(windows or [])  # further windows, each waited for as well

    @property
    def capacity(self) -> float:
        return self.budget.capacity

    async def acquire(self) -> None:
        """Wait until one request may be sent, then take its slot."""
        async with self._lock:  # FIFO: a waiting request is not overtaken
            for window in self.windows:
                await window.acquire()
            while True:
                wait = self.budget.take()
                if wait is None:
                    return
                wait = max(wait, MIN_WAIT_SECONDS)
                self.waited_seconds += wait
                await self._sleep(wait)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Close one acquired request and learn the server's view of the window from its answer.

        Call it once per :meth:`acquire`, with empty headers when no answer came.
        """
        remaining = first_number(header_value(headers, self.remaining_header, self.remaining_key))
        reset_raw = header_value(headers, self.reset_header, self.reset_key)
        reset_in = reset_seconds(reset_raw, self.reset_format) if reset_raw is not None else None
        window = first_number(headers.get(self.window_header)) if self.window_header else None
        window_in = window * self.window_scale if window is not None and window > 0 else None
        if window_in is None and reset_raw is None and remaining is not None and self.window_seconds:
            # A known window length and no reset: a window is over at its end on
            # the clock, or (rolling) a full length after it was seen.
            if self.window_alignment == "clock":
                wall = time.time()
                window_in = (math.floor(wall / self.window_seconds) + 1) * self.window_seconds - wall
            else:
                window_in = self.window_seconds
        self.budget.learn(remaining, reset_raw, reset_in, window_in)
        for limiter in self.windows:
            limiter.observe(headers)

    def pause_for(self, seconds: float) -> None:
        """Hold every sender for ``seconds`` (a 429, or maintenance with Retry-After)."""
        self.budget.pause(seconds)

    def reset_delay(self, headers: Mapping[str, str], retry_after_header: str | None) -> float | None:
        """How long a 429 asks us to wait: Retry-After first, else the window reset."""
        if retry_after_header and headers.get(retry_after_header) is not None:
            delay = seconds_until(headers[retry_after_header])
            if delay is not None:
                return delay
        reset_raw = header_value(headers, self.reset_header, self.reset_key)
        if reset_raw is not None:
            delay = reset_seconds(reset_raw, self.reset_format)
            if delay is not None:
                return delay
        if self.window_header or self.window_seconds:
            return self.budget.reset_in()
        for limiter in self.windows:  # a 429 for a spent daily budget: that window's own reset
            delay = limiter.reset_delay(headers, None)
            if delay is not None:
                return delay
        return None
