"""The rate budget kept in state.db spends requests reserved in small blocks.

Every test runs against a real ``state.db`` on a fake clock, and reads the
budget's row through a connection of its own, as another process sees it.
The promises: a block is counted in the row before any of it goes (a kill
can only waste it), it is small (smaller when the budget is scarce), it
lapses quickly and is given back, a pause stops it, the destination's word
still governs, and two processes on one file never spend more than the window.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.delivery.rate_limit import bucket_shape
from engine.state.sqlite import SqliteState
from engine.state.sqlite.database import Database
from engine.state.sqlite.rate_budget import RESERVE_MOST, RESERVE_SECONDS, SqliteRateBudget
from fakes import FakeTime

NOW = 1_750_000_000.0  # the state's wall clock, in epoch seconds
RATE, CAPACITY = bucket_shape(9000, 3600)  # a preset's 9000 an hour: 2.5 a second, a minute's burst of 150
HOUR = 3600.0


def row(directory: Path, name: str = "b") -> dict[str, Any]:
    """The budget's row as another process reads it."""
    with sqlite3.connect(directory / "state.db") as other:
        found = other.execute(
            "SELECT tokens, remaining, in_flight, paused_until FROM rate_budgets WHERE name = ?", (name,)
        ).fetchone()
    return dict(zip(("tokens", "remaining", "in_flight", "paused_until"), found, strict=True))


def opened(directory: Path, clock: FakeTime, capacity: float = CAPACITY) -> tuple[SqliteState, SqliteRateBudget]:
    state = SqliteState(directory, clock=lambda: NOW)
    return state, state.rate_budget("b", RATE, capacity, clock.monotonic)


def advertised(budget: SqliteRateBudget, remaining: float) -> None:
    """An answer (to no request of ours) says ``remaining`` are left in a window ending in an hour."""
    budget.learn(remaining, "w1", HOUR, None)  # outside an event loop: written at once


def takes(budget: SqliteRateBudget, most: int) -> int:
    """How many requests go before the first wait (at most ``most``); the clock stands still."""
    for taken in range(most):
        if budget.take() is not None:
            return taken
    return most


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    transactions: list[bool] = []
    original = Database.write

    def write(db: Database, *, durable: bool = False) -> Any:
        transactions.append(durable)
        return original(db, durable=durable)

    monkeypatch.setattr(Database, "write", write)
    return transactions


# --------------------------------------------------------------------------
# blocks: counted at once, small, smaller when scarce
# --------------------------------------------------------------------------


def test_a_block_is_counted_in_the_row_before_its_first_request_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """80 requests from an ample bucket: one transaction per 8, each block spent in the row at once."""
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    transactions = count_writes(monkeypatch)
    assert budget.take() is None
    assert row(tmp_path) == {"tokens": CAPACITY - 8, "remaining": None, "in_flight": 8, "paused_until": None}
    assert takes(budget, 7) == 7
    assert row(tmp_path)["tokens"] == CAPACITY - 8  # spent from this process's block: the row already counts them
    assert takes(budget, 72) == 72
    assert row(tmp_path)["tokens"] == CAPACITY - 80
    assert len(transactions) == 10
    state.close()


def test_a_scarce_budget_is_reserved_one_request_at_a_time(tmp_path: Path) -> None:
    """A block is at most an eighth of what is left: 12 advertised go one by one, each counted as it goes."""
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    advertised(budget, 12)
    for left in range(11, -1, -1):
        assert budget.take() is None
        assert row(tmp_path)["remaining"] == left
    assert budget.take() == pytest.approx(HOUR)  # spent: wait for the reset
    state.close()


def test_a_small_bucket_is_reserved_one_request_at_a_time(tmp_path: Path) -> None:
    clock = FakeTime()
    state, budget = opened(tmp_path, clock, capacity=10)
    for left in range(9, -1, -1):
        assert budget.take() is None
        assert row(tmp_path)["tokens"] == pytest.approx(left)
    assert budget.take() == pytest.approx(1 / RATE)
    state.close()


def test_blocks_shrink_as_the_advertised_budget_runs_low(tmp_path: Path) -> None:
    """100 left: blocks of 8 while an eighth of what is left allows it, then smaller, then one by one."""
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    advertised(budget, 100)
    blocks = []
    for _ in range(100):
        before = row(tmp_path)["remaining"]
        assert budget.take() is None
        after = row(tmp_path)["remaining"]
        if after != before:
            blocks.append(before - after)
    assert blocks[:5] == [8, 8, 8, 8, 8]  # 100, 92, 84, 76, 68: an eighth is 8 or more
    assert blocks[5:10] == [7, 6, 5, 5, 4]  # 60, 53, 47, 42, 37: an eighth of what is left
    assert set(blocks[-15:]) == {1}  # under 16 left: one at a time
    assert sum(blocks) == 100 and budget.take() is not None
    state.close()


# --------------------------------------------------------------------------
# a kill wastes a block, never sends uncounted; close and lapse give it back
# --------------------------------------------------------------------------

_CHILD = """
import sys, time
sys.path[:0] = {paths!r}
from engine.state.sqlite import SqliteState
from fakes import FakeTime
state = SqliteState({directory!r}, clock=lambda: {now!r})
budget = state.rate_budget("b", {rate!r}, {capacity!r}, FakeTime().monotonic)
for _ in range(3):
    assert budget.take() is None
print("sent 3", flush=True)
time.sleep(60)
"""


def test_a_process_killed_with_part_of_its_block_unsent_only_wasted_it(tmp_path: Path) -> None:
    """kill -9 after 3 of a block of 8: all 8 stay counted, and the next process spends only what is left."""
    tests = Path(__file__).parent
    script = _CHILD.format(
        paths=[str(tests.parent), str(tests)], directory=str(tmp_path), now=NOW, rate=RATE, capacity=CAPACITY
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "sent 3\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert row(tmp_path)["tokens"] == CAPACITY - 8 and row(tmp_path)["in_flight"] == 8
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    assert takes(budget, 200) == CAPACITY - 8  # the bucket as it was, never refilled by the kill
    state.close()


def test_what_was_reserved_and_not_sent_is_given_back_at_close(tmp_path: Path) -> None:
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    advertised(budget, 1000)
    assert takes(budget, 3) == 3
    assert row(tmp_path)["remaining"] == 992
    state.close()
    assert row(tmp_path)["remaining"] == 997 and row(tmp_path)["in_flight"] == 3  # 3 sent, never answered


def test_a_reservation_lapses_after_a_moment_and_is_given_back_with_the_next(tmp_path: Path) -> None:
    """A request after an idle second does not spend an old block: the 7 unsent go back, a new block is counted."""
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    advertised(budget, 1000)
    assert budget.take() is None
    assert row(tmp_path) | {"paused_until": None} == {
        "tokens": None,
        "remaining": 992,
        "in_flight": 8,
        "paused_until": None,
    }
    clock.now += RESERVE_SECONDS + 0.5
    assert budget.take() is None
    assert (row(tmp_path)["remaining"], row(tmp_path)["in_flight"]) == (999 - 8, 1 + 8)
    state.close()


def test_an_idle_process_gives_its_lapsed_block_back_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service between requests: no further call comes, yet the 7 it did not send are soon the others' again."""
    from engine.state.sqlite import rate_budget

    monkeypatch.setattr(rate_budget, "RESERVE_SECONDS", 0.05)  # the event loop's timer runs on the real clock
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    advertised(budget, 1000)

    async def one_request_then_idle() -> tuple[Any, Any]:
        assert budget.take() is None
        clock.now += 0.06  # the engine's own clock: the block has lapsed
        held = row(tmp_path)["remaining"]
        await asyncio.sleep(0.3)  # past the lapse and DEFER_SECONDS: nothing else writes
        return held, row(tmp_path)["remaining"]

    assert asyncio.run(one_request_then_idle()) == (992, 999)
    assert row(tmp_path)["in_flight"] == 1
    state.close()


def test_a_block_of_the_advertised_window_is_not_used_past_its_reset(tmp_path: Path) -> None:
    """The window ends within the block's second: the next request waits on the new window's terms, not the old block."""
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    budget.learn(1000, "w1", 0.5, None)  # 1000 left, the window ends in half a second
    assert budget.take() is None
    clock.now += 0.6
    assert budget.take() is None
    # The window rolled over: its count is forgotten, the bucket paces (its first block of 8).
    assert (row(tmp_path)["remaining"], row(tmp_path)["tokens"]) == (None, CAPACITY - 8)
    state.close()


def test_a_block_of_a_window_that_rolled_over_is_not_given_to_the_next_window(tmp_path: Path) -> None:
    """The run's block came from a window that ended; the replay's requests count in the next one: the run's
    leftovers at close must not be added to the new window's count, nor taken off its requests in flight."""
    clock_a, clock_b = FakeTime(start=100.0), FakeTime(start=5.0)
    state_a, a = opened(tmp_path, clock_a)
    state_b, b = opened(tmp_path, clock_b)
    a.learn(1000, "w1", 0.5, None)
    assert a.take() is None  # a block of 8 from window w1
    clock_b.now += 0.6
    assert b.take() is None  # w1 has ended: a block of 8 from the bucket
    b.learn(500, "w2", HOUR, None)  # the next window: 500 left, 7 of the replay's block in flight
    assert (row(tmp_path)["remaining"], row(tmp_path)["in_flight"]) == (493, 7)
    state_a.close()
    assert (row(tmp_path)["remaining"], row(tmp_path)["in_flight"]) == (493, 7)
    state_b.close()
    assert (row(tmp_path)["remaining"], row(tmp_path)["in_flight"]) == (500, 0)


# --------------------------------------------------------------------------
# pauses
# --------------------------------------------------------------------------


def test_a_pause_this_process_sees_stops_its_block_at_once_and_gives_it_back(tmp_path: Path) -> None:
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    advertised(budget, 1000)
    assert budget.take() is None  # a block of 8, one sent
    budget.pause(30.0)  # its answer was a 429
    assert (row(tmp_path)["remaining"], row(tmp_path)["in_flight"]) == (999, 1)
    assert row(tmp_path)["paused_until"] == pytest.approx(NOW + 30.0)
    assert budget.take() == pytest.approx(30.0)
    state.close()


def test_a_pause_another_process_writes_is_seen_at_the_next_reservation(tmp_path: Path) -> None:
    """A `dlq replay` got a 429: the `run` beside it sends at most the rest of its block, then waits."""
    clock_a, clock_b = FakeTime(start=100.0), FakeTime(start=5.0)
    state_a, a = opened(tmp_path, clock_a)
    state_b, b = opened(tmp_path, clock_b)
    advertised(a, 1000)
    assert a.take() is None
    b.pause(30.0)
    assert takes(a, 20) == RESERVE_MOST - 1
    assert a.take() == pytest.approx(30.0)
    state_a.close()
    state_b.close()


# --------------------------------------------------------------------------
# the destination's word
# --------------------------------------------------------------------------


def test_reserved_requests_count_as_in_flight_when_an_answer_is_learnt(tmp_path: Path) -> None:
    """The server's Remaining does not count the 7 of the block not sent yet: the row keeps them out."""
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    advertised(budget, 1000)
    assert budget.take() is None
    budget.learn(999, "w1", HOUR, None)  # the answer to the one sent
    assert (row(tmp_path)["remaining"], row(tmp_path)["in_flight"]) == (999 - 7, 7)
    state.close()
    assert (row(tmp_path)["remaining"], row(tmp_path)["in_flight"]) == (999, 0)  # the server's figure, exactly


def test_an_answer_saying_little_is_left_shrinks_the_block(tmp_path: Path) -> None:
    """A block of 8 from the bucket; the first answer says 20 are left: the block keeps an eighth (2), gives back 5."""
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    assert budget.take() is None
    budget.learn(20, "w1", HOUR, None)
    assert (row(tmp_path)["remaining"], row(tmp_path)["in_flight"]) == (20 - 2, 2)
    assert takes(budget, 30) == 20  # the 2 kept, then the 18 the row holds: exactly what the server said
    state.close()


def test_an_answer_saying_nothing_is_left_stops_the_block(tmp_path: Path) -> None:
    clock = FakeTime()
    state, budget = opened(tmp_path, clock)
    advertised(budget, 1000)
    assert budget.take() is None
    budget.learn(0, "w1", HOUR, None)  # others acting as the same user spent the window
    assert budget.take() == pytest.approx(HOUR)
    assert row(tmp_path)["in_flight"] == 0
    state.close()


# --------------------------------------------------------------------------
# two processes on one state.db
# --------------------------------------------------------------------------


@pytest.mark.parametrize("advertises", [True, False], ids=["advertised-window", "bucket-only"])
def test_two_processes_reserving_blocks_never_send_more_than_the_window(tmp_path: Path, advertises: bool) -> None:
    """A `run` and a `dlq replay` take turns, each in blocks, on a frozen clock.

    With a destination that advertises 100 left (each process learns the
    server's own count from every answer), together they send exactly the
    100; with one that advertises nothing, exactly the bucket's 150. Never
    one more.
    """
    clock_a, clock_b = FakeTime(start=100.0), FakeTime(start=5.0)
    state_a, a = opened(tmp_path, clock_a)
    state_b, b = opened(tmp_path, clock_b)
    server_left = 100 if advertises else int(CAPACITY)
    window = server_left
    if advertises:
        advertised(a, server_left)
    sent = {"a": 0, "b": 0}
    turns = [("a", a)] * 3 + [("b", b)] * 2  # the run goes a little faster
    for turn in range(400):
        name, budget = turns[turn % len(turns)]
        if budget.take() is None:
            assert server_left > 0, f"{name} sent a request past the window"
            server_left -= 1
            sent[name] += 1
            budget.learn(server_left if advertises else None, "w1" if advertises else None, HOUR, None)
    assert sum(sent.values()) == window and sent["a"] > 0 and sent["b"] > 0
    state_a.close()
    state_b.close()
    assert row(tmp_path)["in_flight"] == 0
