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
        {"integration": "a", "at": now - 10, "outcome": "delivered", "attempts": 1, "latency_ms": 10.0,
         "answers_429": 1, "token_requests": 1},
        {"integration": "a", "at": now - 20, "outcome": "delivered", "attempts": 2, "latency_ms": 30.0},
        {"integration": "a", "at": now - 7200, "outcome": "dead_lettered", "cause": "http_500", "id": "9"},
        {"integration": "a", "at": now - 30, "outcome": "dropped", "reason": "no_consent"},
        {"integration": "b", "at": now - 5, "outcome": "failed", "cause": "http_422", "id": "12"},
    ]
    figures = {f["integration"]: f for f in health(rows, ["a", "b", "c"], {"a": 1}, clock=lambda: now)}
    hour, day = figures["a"]["windows"]["last hour"], figures["a"]["windows"]["last day"]
    assert (hour["delivered"], hour["dead_lettered"], hour["dropped"], hour["http_429"], hour["token_requests"]) == \
        (2, 0, 1, 1, 1)
    assert (day["dead_lettered"], day["total"]) == (1, 4)
    assert (hour["p50_ms"], hour["p95_ms"]) == (10.0, 30.0)
    assert figures["a"]["last_error"]["cause"] == "http_500" and figures["a"]["dead_letters"] == 1
    assert figures["b"]["last_error"]["id"] == "12"
    assert figures["c"]["windows"]["last day"]["total"] == 0 and figures["c"]["last_error"] is None
