"""Redis failures as the state's own errors, so the buffered stores keep a refused write and retry it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import RedisError

from ..errors import StateError, StateWriteError


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise StateError(f"redis: cannot read {what} ({type(exc).__name__})") from None


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        # Only the kind of error: its text may quote a command, and commands hold tokens.
        raise StateWriteError(f"redis: cannot write {what} ({type(exc).__name__})", full="OOM" in str(exc)) from None
