"""The record options of every command that records (``run``, ``serve``, ``worker``, ``dlq replay``).

``--no-record`` keeps none; ``--record-limit N`` and ``--record-days D``
bound it (the engine's defaults otherwise: 10,000 per integration, 7 days).
The bounds are applied by the writer as it writes, so a lower one given to a
later command trims what an earlier one kept at its first write.
engine.state.record is imported only when a bound is given: a dry run's
start stays as light as it was.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from .common import UsageError

# Mirrors engine.state.record's defaults (kept there; a test checks they agree), for help texts only.
DEFAULT_LIMIT = 10_000
DEFAULT_DAYS = 7


def add_record_options(cmd: argparse.ArgumentParser, what: str = "recent events") -> None:
    cmd.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help=f"keep no record of {what} for the console (default: the last {DEFAULT_LIMIT:,} per "
        f"integration, at most {DEFAULT_DAYS} days, in the state directory or Redis)",
    )
    cmd.add_argument(
        "--record-limit",
        type=_entry_count,
        metavar="N",
        help=f"the record keeps the last N events per integration (default: {DEFAULT_LIMIT:,})",
    )
    cmd.add_argument(
        "--record-days",
        type=_days,
        metavar="DAYS",
        help=f"the record keeps no event older than DAYS days, a fraction allowed (default: {DEFAULT_DAYS})",
    )


def record_choice(args: argparse.Namespace) -> Any:
    """What to hand ``Engine(record=...)``: ``False``, ``True`` (the defaults) or a ``RecordLimits``."""
    limit = getattr(args, "record_limit", None)
    days = getattr(args, "record_days", None)
    if not getattr(args, "record", True):
        if limit is not None or days is not None:
            given = "--record-limit" if limit is not None else "--record-days"
            raise UsageError(f"{given} bounds the record that --no-record turns off: pass one or the other")
        return False
    if limit is None and days is None:
        return True
    from ..state.record import DEFAULT_MAX_AGE_SECONDS, DEFAULT_PER_INTEGRATION, RecordLimits

    return RecordLimits(
        per_integration=limit if limit is not None else DEFAULT_PER_INTEGRATION,
        max_age_seconds=days * 86_400 if days is not None else DEFAULT_MAX_AGE_SECONDS,
    )


def _entry_count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of events, 1 or more, got {text!r}")
    return int(text)


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be more than 0 days, got {text}")
    return value
