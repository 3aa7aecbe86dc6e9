"""Redis failures as the state's own errors, so the buffered stores keep a refused write and retry it."""

from __future__ import annotations

from types import TracebackType

from redis.exceptions import RedisError

from ..errors import StateError, StateWriteError


class _Translated:
    """A context in which a Redis error becomes the state's (a class, not a generator context: a worker enters
    a few of these per lead, at a third of the CPU)."""

    __slots__ = ("what", "write")

    def __init__(self, what: str, write: bool) -> None:
        self.what = what
        self.write = write

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is None or not isinstance(exc, RedisError):
            return
        if self.write:
            # Only the kind of error: its text may quote a command, and commands hold tokens.
            message = f"redis: cannot write {self.what} ({type(exc).__name__})"
            raise StateWriteError(message, full="OOM" in str(exc)) from None
        raise StateError(f"redis: cannot read {self.what} ({type(exc).__name__})") from None


def reading(what: str) -> _Translated:
    return _Translated(what, False)


def writing(what: str) -> _Translated:
    return _Translated(what, True)
