"""The shapes a host may hand events in, made into the one the engine reads: batches of ``(index, event)``."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any


async def numbered(events: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[tuple[int, Any]]:
    if hasattr(events, "__aiter__"):
        index = 0
        async for event in events:
            yield index, event
            index += 1
    else:
        for index, event in enumerate(events):
            yield index, event


async def one_at_a_time(items: AsyncIterable[tuple[int, Any]]) -> AsyncIterator[list[tuple[int, Any]]]:
    async for item in items:
        yield [item]
