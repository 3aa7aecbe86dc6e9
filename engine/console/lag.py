"""Each integration's lag as the console reads it: events it has not finished yet, where the store knows.

The same figure as ``/metrics``' ``signal_integration_lag_events``, read
from outside the process that delivers: a ``serve`` holds the SQLite queue's
lock, so the console opens ``queue.db`` read-only and counts each
integration's waiting rows; on Redis it asks each integration's consumer
group (pending, plus entries not read yet). A state directory no ``serve``
used (a ``run``) has no queue: the lag is unknown there, shown as such,
never as 0.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..loggers import package_logger

log = package_logger(__name__)

QUEUE_DB = "queue.db"  # engine.state.sqlite.queue.QUEUE_DB: read here without taking the queue's lock


def sqlite_lags(
    directory: str | Path, names: Sequence[str] | Callable[[], Iterable[str]]
) -> Callable[[], dict[str, int]]:
    """Waiting rows per integration in ``<directory>/queue.db``; ``{}`` while there is no queue.

    ``names`` are the integrations shown at 0 when nothing of theirs waits; a
    callable is asked at each read, so an integration set up in the console
    since the page was first shown is listed too.
    """
    path = Path(directory) / QUEUE_DB

    def read() -> dict[str, int]:
        if not path.is_file():
            return {}
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
        except sqlite3.Error as exc:
            log.warning("console: cannot read the queue's lag in %s (%s)", path, exc)
            return {}
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'pending'").fetchone() is None:
                return {}
            lags = dict.fromkeys(
                names() if callable(names) else names, 0
            )  # a queue that exists and holds no row of a name: nothing waits
            for name, count in conn.execute("SELECT integration, COUNT(*) FROM pending GROUP BY integration"):
                lags[str(name)] = int(count)
            return lags
        except sqlite3.Error as exc:
            log.warning("console: cannot read the queue's lag in %s (%s)", path, exc)
            return {}
        finally:
            conn.close()

    return read


def redis_lags(client: Any, stream: str) -> Callable[[], dict[str, int]]:
    """Per consumer group of ``stream`` (one per integration): entries pending plus entries not read yet."""

    def read() -> dict[str, int]:
        try:
            if not client.exists(stream):
                return {}
            lags = {}
            for group in client.xinfo_groups(stream):
                name = _text(group.get("name"))
                lag = group.get("lag")
                if lag is None:  # Redis cannot tell (entries deleted inside the range): count them
                    last = _text(group.get("last-delivered-id")) or "0-0"
                    lag = len(client.xrange(stream, min=f"({last}", max="+") or [])
                lags[name] = int(group.get("pending") or 0) + int(lag)
            return lags
        except (OSError, Exception) as exc:  # noqa: BLE001 - a Redis error: the lag is unknown, the page shows
            log.warning("console: cannot read the lag of %s (%s)", stream, type(exc).__name__)
            return {}

    return read


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


__all__ = ["redis_lags", "sqlite_lags"]
