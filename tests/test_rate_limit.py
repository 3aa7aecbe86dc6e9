"""Rate-limit header parsing and the client-side limiter, on a fake clock."""

from __future__ import annotations

import asyncio
import email.utils
import time
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.delivery.rate_limit import MAX_WAIT_SECONDS, RateLimiter, first_number, seconds_until
from fakes import FakeTime

NOW = 1_750_000_000.0  # a fixed wall clock, in epoch seconds


def limiter(clock: FakeTime, requests: int = 10, per_seconds: float = 10.0) -> RateLimiter:
    return RateLimiter(
        requests,
        per_seconds,
        remaining_header="X-RateLimit-Remaining",
        reset_header="X-RateLimit-Reset",
        clock=clock.monotonic,
        sleep=clock.sleep,
    )


async def acquire_times(rl: RateLimiter, clock: FakeTime, n: int) -> list[float]:
    times = []
    for _ in range(n):
        await rl.acquire()
        times.append(clock.now)
    return times


# --------------------------------------------------------------------------
# header parsing
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("9999, 19988", 9999.0),
        ("9999,19988", 9999.0),
        ("  42 ", 42.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (None, None),
        ("", None),
        ("abc", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_first_number(value: str | None, expected: float | None) -> None:
    assert first_number(value) == expected


def test_seconds_until_delay_seconds() -> None:
    assert seconds_until("120", NOW) == 120.0
    assert seconds_until("0", NOW) == 0.0
    assert seconds_until("2.5", NOW) == 2.5


def test_seconds_until_epoch_seconds() -> None:
    assert seconds_until(str(int(NOW) + 90), NOW) == pytest.approx(90.0)
    assert seconds_until(f"{int(NOW) + 30}, {int(NOW) + 3600}", NOW) == pytest.approx(30.0)


def test_seconds_until_http_date() -> None:
    assert seconds_until(email.utils.formatdate(NOW + 45, usegmt=True), NOW) == pytest.approx(45.0)
    assert seconds_until(
        "Wed, 21 Oct 2015 07:28:00 GMT", datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()
    ) == pytest.approx(30.0)


def test_seconds_until_iso_timestamp() -> None:
    when = datetime.fromtimestamp(NOW + 600, tz=UTC)
    assert seconds_until(when.strftime("%Y-%m-%dT%H:%M:%SZ"), NOW) == pytest.approx(600.0)
    assert seconds_until(when.isoformat(), NOW) == pytest.approx(600.0)
    # Naive timestamps are read as UTC.
    assert seconds_until(when.replace(tzinfo=None).isoformat(), NOW) == pytest.approx(600.0)
    # An offset is honoured.
    assert seconds_until(
        "2025-06-15T12:00:30+02:00", datetime(2025, 6, 15, 10, 0, 0, tzinfo=UTC).timestamp()
    ) == pytest.approx(30.0)


def test_seconds_until_uses_the_real_wall_clock_by_default() -> None:
    # Bracketed by readings on either side, so a stalled machine cannot fail it.
    before = time.time()
    at = int(before) + 100
    waited = seconds_until(str(at))
    after = time.time()
    assert waited is not None and at - after <= waited <= at - before


@pytest.mark.parametrize("value", [str(int(NOW) - 50), "Wed, 21 Oct 2015 07:28:00 GMT", "2001-01-01T00:00:00Z", "-5"])
def test_seconds_until_never_goes_negative(value: str) -> None:
    assert seconds_until(value, NOW) == 0.0


@pytest.mark.parametrize("value", ["999999", str(int(NOW) + 10 * 86400)])
def test_seconds_until_is_capped(value: str) -> None:
    assert seconds_until(value, NOW) == MAX_WAIT_SECONDS


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "next tuesday"])
def test_seconds_until_unparseable(value: str | None) -> None:
    assert seconds_until(value, NOW) is None


def test_reset_delay_prefers_retry_after_then_the_reset_with_no_extra_second() -> None:
    rl = limiter(FakeTime())
    reset = str(int(time.time()) + 30)
    assert rl.reset_delay({"Retry-After": "5", "X-RateLimit-Reset": reset}, "Retry-After") == 5.0
    assert rl.reset_delay({"X-RateLimit-Reset": reset}, "Retry-After") == pytest.approx(30, abs=1.0)
    assert rl.reset_delay({"Retry-After": "junk", "X-RateLimit-Reset": reset}, "Retry-After") == pytest.approx(
        30, abs=1.0
    )
    assert rl.reset_delay({}, "Retry-After") is None


# --------------------------------------------------------------------------
# token bucket
# --------------------------------------------------------------------------


def test_bursts_up_to_capacity_then_paces_at_the_rate() -> None:
    clock = FakeTime()
    rl = limiter(clock, requests=10, per_seconds=10)  # 1 request/s, capacity 10
    start = clock.now

    times = asyncio.run(acquire_times(rl, clock, 14))

    assert rl.capacity == 10
    assert times[:10] == [start] * 10  # the burst goes out at once
    assert [t - start for t in times[10:]] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert rl.waited_seconds == pytest.approx(4.0)


def test_preset_rate_gives_a_minute_of_burst() -> None:
    clock = FakeTime()
    rl = limiter(clock, requests=9000, per_seconds=3600)  # 2.5/s
    start = clock.now

    times = asyncio.run(acquire_times(rl, clock, 152))

    assert rl.capacity == pytest.approx(150.0)
    assert times[149] == start
    assert times[150] - start == pytest.approx(0.4)
    assert times[151] - start == pytest.approx(0.8)


def test_bucket_refills_while_idle_but_not_beyond_capacity() -> None:
    clock = FakeTime()
    rl = limiter(clock, requests=10, per_seconds=10)

    async def scenario() -> list[float]:
        await acquire_times(rl, clock, 10)
        clock.now += 1000  # a long idle period
        start = clock.now
        times = await acquire_times(rl, clock, 11)
        return [t - start for t in times]

    offsets = asyncio.run(scenario())

    assert offsets[:10] == [0.0] * 10
    assert offsets[10] == pytest.approx(1.0)


# --------------------------------------------------------------------------
# feedback from the server
# --------------------------------------------------------------------------


def test_remaining_zero_waits_until_the_server_reset() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    rl.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 20)})
    start = clock.now

    asyncio.run(rl.acquire())

    assert clock.now - start == pytest.approx(20, abs=1.0)

    # The window rolled over: the next request goes at once.
    before = clock.now
    asyncio.run(rl.acquire())
    assert clock.now == before


def test_two_value_remaining_header_uses_the_first() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    rl.observe({"X-RateLimit-Remaining": "0, 19988", "X-RateLimit-Reset": str(int(time.time()) + 10)})
    start = clock.now

    asyncio.run(rl.acquire())

    assert clock.now - start >= 9


def test_remaining_without_reset_does_not_block_forever() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    rl.observe({"X-RateLimit-Remaining": "0"})
    start = clock.now

    asyncio.run(rl.acquire())

    assert clock.now == start


def test_remaining_above_zero_does_not_wait() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    rl.observe({"X-RateLimit-Remaining": "9999, 19988", "X-RateLimit-Reset": str(int(time.time()) + 3000)})
    start = clock.now

    asyncio.run(acquire_times(rl, clock, 5))

    assert clock.now == start


def test_in_flight_requests_count_against_the_servers_remaining() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    rl.observe({"X-RateLimit-Remaining": "2", "X-RateLimit-Reset": str(int(time.time()) + 100)})
    start = clock.now

    times = asyncio.run(acquire_times(rl, clock, 3))

    assert times[0] == times[1] == start  # the two the server still allows
    assert times[2] - start == pytest.approx(100, abs=1.0)


def test_out_of_order_answers_in_one_window_keep_the_lowest_remaining() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    reset = str(int(time.time()) + 100)
    rl.observe({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": reset})
    rl.observe({"X-RateLimit-Remaining": "8", "X-RateLimit-Reset": reset})  # an older answer arriving late
    start = clock.now

    times = asyncio.run(acquire_times(rl, clock, 2))

    assert times[0] == start
    assert times[1] - start >= 99


def test_a_new_window_replaces_the_remaining_count() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    rl.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 100)})
    rl.observe({"X-RateLimit-Remaining": "50", "X-RateLimit-Reset": str(int(time.time()) + 3700)})
    start = clock.now

    asyncio.run(acquire_times(rl, clock, 3))

    assert clock.now == start


def delta_limiter(clock: FakeTime, requests: int = 1, per_seconds: float = 10.0) -> RateLimiter:
    """Reset as delta seconds: exact on a fake clock, whatever the wall clock says."""
    return RateLimiter(
        requests,
        per_seconds,
        remaining_header="X-RateLimit-Remaining",
        reset_header="X-RateLimit-Reset",
        reset_format="delta_seconds",
        clock=clock.monotonic,
        sleep=clock.sleep,
    )


def test_an_advertised_budget_is_spent_whatever_the_static_bucket_says() -> None:
    """The bucket (1 per 10 s) is only the fallback: the server says 50 are left, so 50 go at once."""
    clock = FakeTime()
    rl = delta_limiter(clock)
    rl.observe({"X-RateLimit-Remaining": "50", "X-RateLimit-Reset": "5"})
    start = clock.now

    times = asyncio.run(acquire_times(rl, clock, 50))

    assert times == [start] * 50


def test_a_spent_window_resumes_exactly_at_the_advertised_reset() -> None:
    clock = FakeTime()
    rl = delta_limiter(clock, requests=100)
    rl.observe({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "5"})
    start = clock.now

    times = asyncio.run(acquire_times(rl, clock, 2))

    assert times[0] == start
    assert times[1] - start == pytest.approx(5.0, abs=0.01)  # not 6: no fixed extra second


def test_after_the_reset_the_bucket_paces_until_the_server_speaks_again() -> None:
    clock = FakeTime()
    rl = delta_limiter(clock, requests=2, per_seconds=10.0)  # bucket capacity 2 (a minute's worth, capped)
    rl.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "5"})
    start = clock.now

    times = asyncio.run(acquire_times(rl, clock, 3))

    assert times[0] - start == pytest.approx(5.0, abs=0.01)
    assert times[1] == times[0]  # the bucket's burst
    assert times[2] - times[1] == pytest.approx(5.0, abs=0.01)  # then its rate: 2 per 10 s


def test_headers_the_limiter_was_not_told_about_are_ignored() -> None:
    clock = FakeTime()
    rl = RateLimiter(10, 10, clock=clock.monotonic, sleep=clock.sleep)  # no header names configured
    rl.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 100)})
    start = clock.now

    asyncio.run(rl.acquire())

    assert clock.now == start


# --------------------------------------------------------------------------
# pauses
# --------------------------------------------------------------------------


def test_pause_for_holds_every_acquirer() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    start = clock.now
    released: list[float] = []

    async def one() -> None:
        await rl.acquire()
        released.append(clock.now)

    async def scenario() -> None:
        rl.pause_for(5)
        await asyncio.gather(*(one() for _ in range(4)))

    asyncio.run(scenario())

    assert len(released) == 4
    assert all(t - start >= 5 for t in released)
    assert max(released) - start == pytest.approx(5.0)  # the bucket still had tokens: no extra wait


def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    start = clock.now
    rl.pause_for(10)
    rl.pause_for(3)
    rl.pause_for(-4)

    asyncio.run(rl.acquire())

    assert clock.now - start == pytest.approx(10.0)
    assert rl.waited_seconds == pytest.approx(10.0)


def test_pause_for_zero_does_not_wait() -> None:
    clock = FakeTime()
    rl = limiter(clock)
    start = clock.now
    rl.pause_for(0)

    asyncio.run(rl.acquire())

    assert clock.now == start
    assert clock.sleeps == []


# --------------------------------------------------------------------------
# structured headers and a known window without a reset
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, key, expected",
    [
        ("limit=240, remaining=239, reset=1", "remaining", "239"),
        ("limit=240, remaining=239, reset=1", "reset", "1"),
        ('limit=240; remaining="7"; reset=1', "Remaining", "7"),
        ("limit=240, reset=1", "remaining", None),
    ],
)
def test_one_item_of_a_structured_header(value: str, key: str, expected: str | None) -> None:
    from engine.delivery.rate_limit import header_value

    assert header_value({"ratelimit": value}, "ratelimit", key) == expected


def test_a_structured_ratelimit_header_is_spent_and_waited_out() -> None:
    clock = FakeTime()
    rl = RateLimiter(
        100,
        1,
        remaining_header="ratelimit",
        remaining_key="remaining",
        reset_header="ratelimit",
        reset_key="reset",
        reset_format="delta_seconds",
        clock=clock.monotonic,
        sleep=clock.sleep,
    )
    rl.observe({"ratelimit": "limit=2, remaining=0, reset=3"})
    start = clock.now

    asyncio.run(rl.acquire())

    assert clock.now - start == pytest.approx(3.0, abs=0.01)


def test_a_rolling_window_of_known_length_is_waited_out_when_spent() -> None:
    """Remaining is advertised, the reset is not: a spent window lasts window_seconds from when it was seen."""
    clock = FakeTime()
    rl = RateLimiter(
        100, 1, remaining_header="X-Remaining", window_seconds=60, clock=clock.monotonic, sleep=clock.sleep
    )
    rl.observe({"X-Remaining": "0"})
    start = clock.now

    asyncio.run(rl.acquire())

    assert clock.now - start == pytest.approx(60.0, abs=0.01)


def test_a_clock_window_ends_on_the_next_multiple_of_its_length(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fixed wall clock: read live, a minute could turn between the test's reading and the limiter's.
    import engine.delivery.rate_limit as rate_limit

    monkeypatch.setattr(rate_limit, "time", types.SimpleNamespace(time=lambda: NOW + 12.5, monotonic=time.monotonic))
    clock = FakeTime()
    rl = RateLimiter(
        100,
        1,
        remaining_header="X-Remaining",
        window_seconds=60,
        window_alignment="clock",
        clock=clock.monotonic,
        sleep=clock.sleep,
    )
    rl.observe({"X-Remaining": "0"})
    start = clock.now

    asyncio.run(rl.acquire())

    assert NOW % 60 == 40  # so the window in progress ends at NOW + 20: 7.5 s after NOW + 12.5
    assert clock.now - start == pytest.approx(7.5, abs=0.01)


# --------------------------------------------------------------------------
# several windows (delivery.rate_limit.windows)
# --------------------------------------------------------------------------

WINDOWED = """\
  rate_limit:
    requests: 100
    per_seconds: 10
    windows:
      - requests: 5
        per_seconds: 10
      - requests: 250000
        per_seconds: 86400
        headers:
          remaining: X-Daily-Remaining
          reset: X-Daily-Reset
          reset_format: delta_seconds
"""


def windowed_limiter(tmp_path: Path, clock: FakeTime) -> RateLimiter:
    from engine.compile.compiler import load_preset
    from language_fixtures import ACME_PRESET, write_acme

    preset = load_preset(
        str(write_acme(tmp_path, ACME_PRESET, ("  rate_limit: {requests: 100, per_seconds: 1}\n", WINDOWED)))
    )
    assert [w.requests for w in preset.delivery.rate_limit.windows] == [5, 250000]
    return RateLimiter.from_spec(preset.delivery.rate_limit, clock=clock.monotonic, sleep=clock.sleep)


def test_the_tightest_window_paces_the_requests(tmp_path: Path) -> None:
    """100 per 10 s would let 6 go at once; the second window, 5 per 10 s, holds the sixth 2 s (its refill)."""
    clock = FakeTime()
    rl = windowed_limiter(tmp_path, clock)
    start = clock.now
    times = asyncio.run(acquire_times(rl, clock, 6))
    assert [round(t - start, 3) for t in times] == [0, 0, 0, 0, 0, 2.0]


def test_a_spent_window_read_from_its_own_headers_holds_every_request(tmp_path: Path) -> None:
    """The daily window's headers say it is spent for 30 s: the burst window has room, the request still waits."""
    clock = FakeTime()
    rl = windowed_limiter(tmp_path, clock)
    asyncio.run(rl.acquire())
    rl.observe({"X-Daily-Remaining": "0", "X-Daily-Reset": "30"})
    start = clock.now
    asyncio.run(rl.acquire())
    assert clock.now - start == pytest.approx(30.0, abs=0.01)
    # A 429 of the spent daily window is waited out to that window's reset.
    assert rl.reset_delay({"X-Daily-Reset": "12"}, "Retry-After") == 12.0


def test_one_window_still_works_alone() -> None:
    clock = FakeTime()
    rl = limiter(clock, requests=2, per_seconds=2)
    assert rl.windows == []
    start = clock.now
    times = asyncio.run(acquire_times(rl, clock, 3))
    assert [round(t - start, 3) for t in times] == [0, 0, 1.0]


def test_check_names_a_window_mistake_at_its_line(tmp_path: Path) -> None:
    from engine.compile.compiler import PresetError, load_preset
    from language_fixtures import ACME_PRESET, write_acme

    path = write_acme(
        tmp_path,
        ACME_PRESET,
        (
            "  rate_limit: {requests: 100, per_seconds: 1}\n",
            WINDOWED.replace(
                "        per_seconds: 10\n      - requests",
                "        per_seconds: 10\n        window_alignment: clock\n      - requests",
            ),
        ),
    )
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    [line] = info.value.problems
    number = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "window_alignment: clock" in text)
    assert line.startswith(f"{path}:{number}:")
    assert "delivery.rate_limit.windows[0].window_alignment: window_alignment needs window_seconds" in line


# --------------------------------------------------------------------------
# a state directory keeps every window's budget (state.db, rate_budgets)
# --------------------------------------------------------------------------


def engine_on_state(tmp_path: Path, state: object, clock: FakeTime) -> object:
    """An engine of the windowed preset on ``state``: its limiter spends the state's budgets."""
    from engine.runtime import Engine
    from language_fixtures import ACME_PRESET, write_acme

    folder = tmp_path / "preset"
    folder.mkdir(exist_ok=True)
    path = write_acme(folder, ACME_PRESET, ("  rate_limit: {requests: 100, per_seconds: 1}\n", WINDOWED))
    return Engine.from_preset(str(path), {"api_key": "k"}, state=state, sleep=clock.sleep, clock=clock.monotonic)


async def takes_without_waiting(rl: RateLimiter, clock: FakeTime, most: int, longer_than: float = 0.0) -> int:
    """How many requests go before the first wait longer than ``longer_than`` seconds (at most ``most``)."""
    for taken in range(most):
        before = clock.now
        await rl.acquire()
        rl.observe({})
        if clock.now - before > longer_than:
            return taken
    return most


def test_a_restart_on_the_same_state_keeps_what_was_left_of_the_daily_window(tmp_path: Path) -> None:
    """The daily window advertises 10 left for 30 minutes; 4 are spent, then the engine restarts.

    The restarted engine (a new process's clock, the same state.db) sends
    the 6 that are left and then waits for the reset, not a full budget.
    """
    from engine.state.sqlite import SqliteState

    first_clock = FakeTime(start=50.0)
    state = SqliteState(tmp_path / "state", clock=lambda: NOW)
    rl = engine_on_state(tmp_path, state, first_clock).limiter
    asyncio.run(rl.acquire())
    rl.observe({"X-Daily-Remaining": "10", "X-Daily-Reset": str(1800)})
    for _ in range(4):
        asyncio.run(rl.acquire())
        rl.observe({})
    state.close()

    later = FakeTime(start=7.0)  # another process: its monotonic clock means nothing to the first one's
    reopened = SqliteState(tmp_path / "state", clock=lambda: NOW + 60)  # a minute later on the wall
    rl = engine_on_state(tmp_path, reopened, later).limiter
    # The burst window (5 per 10 s) paces them; only the daily one holds a request for long.
    assert asyncio.run(takes_without_waiting(rl, later, 20, longer_than=600)) == 6
    reopened.close()


def test_the_restarted_wait_is_the_rest_of_the_advertised_window(tmp_path: Path) -> None:
    """A spent daily window, restarted a minute later, is waited out to its reset: 30 minutes less that minute."""
    from engine.state.sqlite import SqliteState

    state = SqliteState(tmp_path / "state", clock=lambda: NOW)
    rl = engine_on_state(tmp_path, state, FakeTime()).limiter
    asyncio.run(rl.acquire())
    rl.observe({"X-Daily-Remaining": "0", "X-Daily-Reset": str(1800)})
    state.close()

    later = FakeTime(start=3.0)
    reopened = SqliteState(tmp_path / "state", clock=lambda: NOW + 60)
    rl = engine_on_state(tmp_path, reopened, later).limiter
    asyncio.run(rl.acquire())
    assert later.now - 3.0 == pytest.approx(1800 - 60, abs=0.01)
    reopened.close()


def test_a_restart_does_not_refill_the_bucket_of_a_window(tmp_path: Path) -> None:
    """Nothing advertised: the burst window (5 per 10 s) spent, a restart at the same moment still waits."""
    from engine.state.sqlite import SqliteState

    clock = FakeTime()
    state = SqliteState(tmp_path / "state", clock=lambda: NOW)
    rl = engine_on_state(tmp_path, state, clock).limiter
    assert asyncio.run(takes_without_waiting(rl, clock, 5)) == 5
    state.close()

    later = FakeTime(start=9.0)
    reopened = SqliteState(tmp_path / "state", clock=lambda: NOW)
    rl = engine_on_state(tmp_path, reopened, later).limiter
    assert asyncio.run(takes_without_waiting(rl, later, 5)) == 0
    assert later.now - 9.0 == pytest.approx(2.0, abs=0.01)  # the burst window's refill of one request
    reopened.close()


def test_two_engines_on_one_state_directory_share_the_daily_window(tmp_path: Path) -> None:
    """A run and a dlq replay on one --state: 10 left is 10 for both together, not 10 each."""
    from engine.state.sqlite import SqliteState

    clock_a, clock_b = FakeTime(start=100.0), FakeTime(start=5.0)
    state_a = SqliteState(tmp_path / "state", clock=lambda: NOW)
    state_b = SqliteState(tmp_path / "state", clock=lambda: NOW)
    a = engine_on_state(tmp_path, state_a, clock_a).limiter
    b = engine_on_state(tmp_path, state_b, clock_b).limiter
    asyncio.run(a.acquire())
    a.observe({"X-Daily-Remaining": "10", "X-Daily-Reset": str(3600)})
    assert asyncio.run(takes_without_waiting(a, clock_a, 4, longer_than=600)) == 4
    assert asyncio.run(takes_without_waiting(b, clock_b, 6, longer_than=600)) == 6
    # The other engine's next request waits for the daily reset: the 10 were spent by both together.
    before = clock_a.now
    assert asyncio.run(takes_without_waiting(a, clock_a, 1, longer_than=600)) == 0
    assert clock_a.now - before > 3000
    state_a.close()
    state_b.close()


class LongWait(Exception):
    pass


class ShortSleeps(FakeTime):
    """A clock on which a wait for a window's reset (over 10 minutes) is refused instead of slept."""

    async def sleep(self, delay: float) -> None:
        if delay > 600:
            raise LongWait
        await super().sleep(delay)


async def takes_before_the_reset(rl: RateLimiter, most: int = 500) -> int:
    """How many requests go (the short windows pacing them) before one would wait for the daily reset."""
    for taken in range(most):
        try:
            await rl.acquire()
        except LongWait:
            return taken
        rl.observe({})
    return most


def test_two_engines_reserving_blocks_on_one_state_directory_spend_the_daily_window_once(tmp_path: Path) -> None:
    """100 left: enough for each engine to reserve blocks of several requests. Still 100 for both together.

    The first engine, gone quiet, holds the unsent rest of its last block (at
    most 7) until it gives it back when it closes; neither sends one more.
    """
    from engine.state.sqlite import SqliteState
    from engine.state.sqlite.rate_budget import RESERVE_MOST

    clock_a, clock_b = ShortSleeps(start=100.0), ShortSleeps(start=5.0)
    state_a = SqliteState(tmp_path / "state", clock=lambda: NOW)
    state_b = SqliteState(tmp_path / "state", clock=lambda: NOW)
    a = engine_on_state(tmp_path, state_a, clock_a).limiter
    b = engine_on_state(tmp_path, state_b, clock_b).limiter
    asyncio.run(a.acquire())
    a.observe({"X-Daily-Remaining": "100", "X-Daily-Reset": str(3600)})
    assert asyncio.run(takes_before_the_reset(a, 29)) == 29  # of the 100 the answer said were left
    first = asyncio.run(takes_before_the_reset(b))
    assert 71 - (RESERVE_MOST - 1) <= first < 71
    state_a.close()
    assert asyncio.run(takes_before_the_reset(b)) == 71 - first
    state_b.close()
