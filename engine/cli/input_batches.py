"""Feed a blocking line reader to the event loop in batches, from a thread of its own.

A live pipe (``--events -``) must never stall deliveries already under way,
so input is read off the loop. Handing lines over one by one costs a thread
hop per line, which is most of what a dropped page view costs; here the
reader hands over whatever one read returned, into a bounded buffer, and
wakes the loop only when it is waiting; the loop takes what is there, up to
``MAX_BATCH`` lines at a time.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_BUFFERED = 4096  # lines read ahead at most: a huge file is not read into memory
# Lines handed over at once at most: a batch lives until its outcomes are out, and a smaller one
# stays below the garbage collector's threshold (its objects are freed, not walked and promoted).
MAX_BATCH = 512


class _Feed:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: collections.deque[Any] = collections.deque()
        self.lock = threading.Condition()
        self.done = False
        self.error: BaseException | None = None
        self.consumer_waiting: asyncio.Future[None] | None = None
        self.stopped = False

    def put(self, items: list[Any]) -> bool:
        """Called by the reader thread; False when the consumer has gone away."""
        with self.lock:
            while len(self.items) >= MAX_BUFFERED and not self.stopped:
                self.lock.wait()
            if self.stopped:
                return False
            self.items.extend(items)
            self._wake()
        return True

    def finish(self, error: BaseException | None = None) -> None:
        with self.lock:
            self.done = True
            self.error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self.consumer_waiting
        if waiter is not None:
            self.consumer_waiting = None
            self.loop.call_soon_threadsafe(_resolve, waiter)

    def take(self) -> tuple[list[Any], bool]:
        """What is buffered (``MAX_BATCH`` lines at most), and whether the reader has finished."""
        with self.lock:
            if len(self.items) <= MAX_BATCH:
                batch = list(self.items)
                self.items.clear()
            else:
                batch = [self.items.popleft() for _ in range(MAX_BATCH)]
            self.lock.notify_all()
            return batch, self.done and not batch

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify_all()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def file_batches(source: Iterable[list[T]]) -> AsyncIterator[list[T]]:
    """The lists ``source`` yields, read on the loop itself, in lists of ``MAX_BATCH`` at most.

    For a file on disk: a read returns at once, so it cannot stall the loop,
    and a thread would only contend with the loop for the interpreter lock.
    """
    held: list[T] = []
    for chunk in source:
        held.extend(chunk)
        while len(held) >= MAX_BATCH:
            yield held[:MAX_BATCH]
            del held[:MAX_BATCH]
    if held:
        yield held


async def batches(source: Iterable[list[T]]) -> AsyncIterator[list[T]]:
    """The lists ``source`` yields (read in a daemon thread), joined into lists of whatever has arrived.

    The thread should only read (I/O releases the interpreter lock); parsing
    belongs on the loop, where it does not contend with the loop's own work.
    """
    loop = asyncio.get_running_loop()
    feed = _Feed(loop)

    def read() -> None:
        try:
            for chunk in source:
                if not feed.put(chunk):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised on the loop
            feed.finish(exc)
            return
        feed.finish()

    thread = threading.Thread(target=read, name="signal-engine-input", daemon=True)
    thread.start()
    try:
        while True:
            batch, finished = feed.take()
            if batch:
                yield batch
                continue
            if finished:
                if feed.error is not None:
                    raise feed.error
                return
            waiter = loop.create_future()
            with feed.lock:
                if feed.items or feed.done:
                    continue
                feed.consumer_waiting = waiter
            await waiter
    finally:
        feed.stop()
