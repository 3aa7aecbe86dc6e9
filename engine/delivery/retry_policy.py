"""Backoff between retries: exponential, capped, with jitter.

Full jitter spreads the retries of many concurrent events over the whole
interval, so a destination that hiccups is not hit again by all of them at
the same instant.
"""

from __future__ import annotations

import random

from ..language.model import RetrySpec


def backoff_delay(spec: RetrySpec, failed_attempts: int, rng: random.Random) -> float:
    """Seconds to wait after the ``failed_attempts``-th failure (1-based)."""
    ceiling = min(spec.max_seconds, spec.initial_seconds * spec.multiplier ** max(0, failed_attempts - 1))
    if spec.jitter == "full":
        return rng.uniform(0, ceiling)
    return ceiling
