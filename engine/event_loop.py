"""A command's coroutine run on the fastest event loop at hand: uvloop's where it is installed.

Why: the loop and its loopback sockets were about a tenth of a delivered
lead's instructions, and a fifth of a sandbox's request; uvloop runs them in
C. It is a dependency (not on Windows); without it asyncio's own loop runs,
and everything works the same on both: aiohttp, the signal handlers, the
worker threads handing results over, redis-py's asyncio client.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def fast_loop_factory() -> Callable[[], Any] | None:
    """uvloop's ``new_event_loop`` where it is installed, else None (asyncio's own loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_fast(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on :func:`fast_loop_factory`'s loop."""
    import asyncio  # not at module level: a dry run needs no event loop

    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        return runner.run(main)


__all__ = ["fast_loop_factory", "run_fast"]
