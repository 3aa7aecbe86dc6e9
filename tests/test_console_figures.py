"""Integration health from the record: counts per window, 429s, token requests, nearest-rank p50/p95."""

from __future__ import annotations

from engine.console.figures import health, percentile


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100 ms
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.95) == 95.0
    assert percentile([7.0], 0.95) == 7.0 and percentile([], 0.5) is None


def test_health_counts_each_window_and_names_the_last_error() -> None:
    now = 1_000_000.0
    rows = [
        {
            "integration": "a",
            "at": now - 10,
            "outcome": "delivered",
            "attempts": 1,
            "latency_ms": 10.0,
            "answers_429": 1,
            "token_requests": 1,
        },
        {"integration": "a", "at": now - 20, "outcome": "delivered", "attempts": 2, "latency_ms": 30.0},
        {"integration": "a", "at": now - 7200, "outcome": "dead_lettered", "cause": "http_500", "id": "9"},
        {"integration": "a", "at": now - 30, "outcome": "dropped", "reason": "no_consent"},
        {"integration": "b", "at": now - 5, "outcome": "failed", "cause": "http_422", "id": "12"},
    ]
    figures = {f["integration"]: f for f in health(rows, ["a", "b", "c"], {"a": 1}, clock=lambda: now)}
    hour, day = figures["a"]["windows"]["last hour"], figures["a"]["windows"]["last day"]
    assert (hour["delivered"], hour["dead_lettered"], hour["dropped"], hour["http_429"], hour["token_requests"]) == (
        2,
        0,
        1,
        1,
        1,
    )
    assert (day["dead_lettered"], day["total"]) == (1, 4)
    assert (hour["p50_ms"], hour["p95_ms"]) == (10.0, 30.0)
    assert figures["a"]["last_error"]["cause"] == "http_500" and figures["a"]["dead_letters"] == 1
    assert figures["b"]["last_error"]["id"] == "12"
    assert figures["c"]["windows"]["last day"]["total"] == 0 and figures["c"]["last_error"] is None


def test_the_small_charts_count_each_outcome_per_bar_and_add_up_to_the_window() -> None:
    from engine.console.figures import series

    now = 1_000_000.0
    rows = [
        {"at": now - 10, "outcome": "delivered"},  # the newest 5-minute bar, the newest hourly bar
        {"at": now - 299, "outcome": "delivered"},
        {"at": now - 301, "outcome": "delivered"},  # the bar before
        {"at": now - 3599, "outcome": "failed"},  # the oldest 5-minute bar
        {"at": now - 3600 * 5 - 1, "outcome": "dead_lettered"},  # five hours and a second ago: the 6th newest hour
        {"at": now - 86400, "outcome": "dropped"},  # exactly a day old: the oldest hourly bar
        {"at": now - 86401, "outcome": "dropped"},  # older than a day: in no bar
        {"at": now - 20, "outcome": "would_send"},  # not one of the counted outcomes
    ]
    charts = series(rows, now)
    hour, day = charts["last hour"], charts["last day"]
    assert hour["bar_seconds"] == 300 and day["bar_seconds"] == 3600
    assert hour["delivered"] == [0] * 10 + [1, 2]
    assert hour["failed"] == [1] + [0] * 11
    assert hour["dead_lettered"] == [0] * 12 and hour["dropped"] == [0] * 12
    assert day["delivered"] == [0] * 23 + [3] and day["failed"] == [0] * 23 + [1]
    assert day["dead_lettered"] == [0] * 18 + [1] + [0] * 5
    assert day["dropped"] == [1] + [0] * 23
    counted = health([{**r, "integration": "a"} for r in rows], ["a"], {}, clock=lambda: now)[0]
    for label in ("last hour", "last day"):
        for kind in ("delivered", "failed", "dead_lettered", "dropped"):
            assert sum(counted["series"][label][kind]) == counted["windows"][label][kind], (label, kind)
