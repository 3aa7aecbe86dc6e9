"""Each integration's health, computed from the record of recent events.

The figures cover what the record still holds (at most its count per
integration and its age): for a busy integration, "the last day" is the
last day the record reaches back to, and the page says how far that is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..outcome import DEAD_LETTERED, DELIVERED, DROPPED, FAILED

WINDOWS = (("last hour", 3600.0), ("last day", 86400.0))
# The small charts: the last hour in 5-minute bars, the last day in hourly bars (oldest first).
BUCKETS = {"last hour": 12, "last day": 24}
COUNTED = (DELIVERED, FAILED, DEAD_LETTERED, DROPPED)
ERRORS = (FAILED, DEAD_LETTERED)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (p50, p95) of latencies in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil(n * fraction)
    return ordered[int(rank) - 1]


def series(rows: Iterable[Mapping[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """Per window, each counted outcome's count per bar, oldest bar first; the last bar ends now.

    The bars of a window add up to its counts in :func:`health` (an event exactly a window old falls in the
    oldest bar; one stamped a moment ahead of this clock, in the newest)."""
    rows = list(rows)
    out: dict[str, dict[str, Any]] = {}
    for label, seconds in WINDOWS:
        bars = BUCKETS[label]
        width = seconds / bars
        counts = {kind: [0] * bars for kind in COUNTED}
        for row in rows:
            age = now - float(row.get("at") or 0)
            kind = row.get("outcome")
            if kind in counts and age <= seconds:
                counts[str(kind)][bars - 1 - min(bars - 1, int(max(0.0, age) // width))] += 1
        out[label] = {"bar_seconds": int(width), **counts}
    return out


def health(
    rows: Iterable[Mapping[str, Any]],
    integrations: Iterable[str],
    letters: Mapping[str, int],
    *,
    lags: Mapping[str, int] | None = None,
    clock: Callable[[], float] = time.time,
) -> list[dict[str, Any]]:
    """Per integration: counts by outcome, 429s and p50/p95 latency per window, the last error, letters waiting,
    and the lag (events not finished yet) where the store knows it, else None (never a made-up 0)."""
    now = clock()
    by_name: dict[str, list[Mapping[str, Any]]] = {name: [] for name in integrations}
    for row in rows:
        by_name.setdefault(str(row.get("integration")), []).append(row)
    out = []
    for name in sorted(by_name):
        mine = by_name[name]
        windows = {}
        for label, seconds in WINDOWS:
            recent = [r for r in mine if float(r.get("at") or 0) >= now - seconds]
            counts = {kind: sum(1 for r in recent if r.get("outcome") == kind) for kind in COUNTED}
            latencies = [
                float(r["latency_ms"])
                for r in recent
                if r.get("outcome") == DELIVERED and isinstance(r.get("latency_ms"), (int, float)) and r.get("attempts")
            ]
            windows[label] = {
                **counts,
                "total": len(recent),
                "http_429": sum(int(r.get("answers_429") or 0) for r in recent),
                "token_requests": sum(int(r.get("token_requests") or 0) for r in recent),
                "p50_ms": percentile(latencies, 0.5),
                "p95_ms": percentile(latencies, 0.95),
            }
        errors = [r for r in mine if r.get("outcome") in ERRORS]
        last = max(errors, key=lambda r: float(r.get("at") or 0)) if errors else None
        out.append(
            {
                "integration": name,
                "windows": windows,
                "last_error": None
                if last is None
                else {
                    "at": last.get("at"),
                    "outcome": last.get("outcome"),
                    "cause": last.get("cause"),
                    "status": last.get("status"),
                    "messageId": last.get("messageId"),
                    "id": last.get("id"),
                },
                "dead_letters": letters.get(name, 0),
                "lag": (lags or {}).get(name),
                "series": series(mine, now),
                "last_event_at": max((float(r.get("at") or 0) for r in mine), default=None),
            }
        )
    return out
