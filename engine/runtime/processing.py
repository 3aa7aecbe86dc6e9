"""Processing events: each prepared in input order, delivered concurrently, its one outcome handed back in order.

Part of :class:`engine.runtime.Engine`. Filtering and transforming happen
synchronously as events are taken (identity joins need input order); a
dropped event is final at once and costs no task; a delivery runs in the
background and is counted in flight, so ``close`` waits for it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..delivery.trail import start_trail
from ..loggers import package_logger
from ..outcome import Outcome
from ..state.journal import event_key
from .inputs import numbered, one_at_a_time

if TYPE_CHECKING:
    from ..delivery.batch import Batcher
    from ..language.model import Preset
    from ..pipeline.prepare import Pipeline, Prepared
    from ..state.record import Recorder
    from .stopping import Stop

# The Engine's parts log as the Engine: one logger, ``engine.runtime``.
log = package_logger(__package__)


class Processing:
    """The Engine's ``process*`` methods; the engine provides what is declared below."""

    if TYPE_CHECKING:
        preset: Preset
        pipeline: Pipeline
        recorder: Recorder | None
        concurrency: int
        integration: str
        on_outcome: Callable[[Outcome], Any] | None
        _named: bool
        _closed: bool
        _inflight: int
        _idle: asyncio.Event
        _stop: Stop | None
        _stop_requested: asyncio.Future[None] | None
        _clock: Callable[[], float]

        _batcher: Batcher | None

        async def start(self) -> Any: ...
        async def _deliver_once(self, prepared: Prepared, key: str) -> Outcome: ...
        async def _finish(self, result: Outcome) -> Outcome: ...

    async def process(self, event: Any, index: int | None = None) -> Outcome:
        """Filter, transform and deliver one event; always returns its one outcome."""
        self._check_open()
        await self.start()
        started = self._clock()
        prepared = self.pipeline.prepare(event, index)
        if isinstance(prepared, Outcome):
            return self._noted(event, await self._finish(prepared), started)
        return self._noted(
            event, await self._track(self._deliver_once(prepared, event_key(event))), started, prepared.traits
        )

    async def process_many(self, events: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Outcome]:
        """Process a stream with bounded concurrency; outcomes come back in input order."""
        async for outcome in self.process_indexed(numbered(events)):
            yield outcome

    async def process_indexed(self, items: AsyncIterable[tuple[int, Any]]) -> AsyncIterator[Outcome]:
        """Like :meth:`process_many` for ``(index, event)`` pairs; an :class:`Outcome` item passes through.

        An outcome is yielded as soon as it and every earlier one are known,
        without waiting for the next input (a queue consumer acknowledges in
        order). At most a few times ``concurrency`` deliveries are held at once.
        """
        async for outcome in self.process_batches(one_at_a_time(items)):
            yield outcome

    async def process_batches(self, batches: AsyncIterable[list[tuple[int, Any]]]) -> AsyncIterator[Outcome]:
        """Like :meth:`process_indexed`, for a source that hands over many events at a time.

        Events are prepared in input order as each batch arrives; a dropped
        event costs no task and no wait, so a stream of page views is about as
        cheap to process here as in a dry run.
        """
        async for ready in self.process_batches_together(batches):
            for outcome in ready:
                yield outcome

    async def process_batches_together(
        self, batches: AsyncIterable[list[tuple[int, Any]]]
    ) -> AsyncIterator[list[Outcome]]:
        """:meth:`process_batches`, handing over every outcome known at once (in input order) as one list.

        The same outcomes at the same moments; a consumer that takes thousands
        of drops a second (``run``) resumes this generator once per list, not
        once per outcome.
        """
        self._check_open()
        await self.start()
        # Enough events in flight at once to fill a batch (twice over, so one fills while one is sent).
        window = max([self.concurrency * 4] + [2 * a.batch.max_items for a in self.preset.actions.values() if a.batch])
        pending: collections.deque[Outcome | asyncio.Future[Outcome]] = collections.deque()
        source = batches.__aiter__()
        next_batch: asyncio.Future[list[tuple[int, Any]]] | None = None
        exhausted = False
        if self._stop_requested is None:
            self._stop_requested = asyncio.get_running_loop().create_future()
        try:
            while pending or not exhausted:
                ready: list[Outcome] = []
                while pending and (isinstance(pending[0], Outcome) or pending[0].done()):
                    head = pending.popleft()
                    ready.append(head if isinstance(head, Outcome) else head.result())
                if ready:
                    if self._named:
                        for result in ready:
                            result.integration = self.integration
                    yield ready
                if self._stop is not None and not exhausted and (next_batch is None or not next_batch.done()):
                    # Stopped: what the source has not handed over is not read.
                    exhausted = True
                    late = await _stop_source(source, next_batch)
                    next_batch = None
                    pending.extend(self._schedule(index, event) for index, event in late)
                    continue
                if not exhausted and next_batch is None and self._inflight < window and not self._closed:
                    next_batch = asyncio.ensure_future(source.__anext__())
                waiting: list[asyncio.Future[Any]] = [
                    f
                    for f in (next_batch, pending[0] if pending else None)
                    if f is not None and not isinstance(f, Outcome)
                ]
                if not waiting:
                    break  # closed mid-stream with nothing in flight
                if self._stop is None:
                    waiting.append(self._stop_requested)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if next_batch is not None and next_batch.done():
                    try:
                        batch = next_batch.result()
                    except StopAsyncIteration:
                        exhausted = True
                        next_batch = None
                        continue
                    next_batch = None
                    pending.extend(self._schedule(index, event) for index, event in batch)
        finally:
            if next_batch is not None and not next_batch.done():
                next_batch.cancel()
        if not exhausted and self._stop is None:
            raise RuntimeError("engine was closed before the stream ended")

    def _schedule(self, index: int, event: Any) -> Outcome | asyncio.Future[Outcome]:
        """Prepare now (input order matters for identity joins), deliver in the background.

        A drop is final at once: with no callback, or a plain one, it needs no task.
        """
        if self.recorder is None:  # nothing to time or note: a drop is its outcome, a lead its delivery
            prepared = event if isinstance(event, Outcome) else self.pipeline.prepare(event, index)
            if not isinstance(prepared, Outcome):
                return self._track(self._deliver_once(prepared, event_key(event)))
            return prepared if self.on_outcome is None else asyncio.ensure_future(self._finish(prepared))
        started = self._clock()
        prepared = event if isinstance(event, Outcome) else self.pipeline.prepare(event, index)
        if not isinstance(prepared, Outcome):
            return self._track(self._deliver_noted(prepared, event, started))
        self._noted(event, prepared, started)
        if self.on_outcome is None:
            return prepared
        return asyncio.ensure_future(self._finish(prepared))

    async def _deliver_noted(self, prepared: Prepared, event: Any, started: float) -> Outcome:
        """Deliver, then hand the outcome and the trail of its requests to the record (its values masked there).

        The trail is this task's (a context variable): the task that sends
        the requests starts from a copy of this task's context, so it adds to
        the same trail. A batched action's requests carry many events: no
        trail then, as none is started for them.
        """
        assert self.recorder is not None
        trail = start_trail() if prepared.action.batch is None or self._batcher is None else None
        result = await self._deliver_once(prepared, event_key(event))
        self.recorder.note(event, result, self._clock() - started, traits=prepared.traits, trail=trail)
        return result

    def _noted(self, event: Any, result: Outcome, started: float, traits: Mapping[str, Any] | None = None) -> Outcome:
        """Hand the outcome to the record of recent events (buffered; see :mod:`engine.state.record`)."""
        if self.recorder is not None:
            self.recorder.note(
                None if isinstance(event, Outcome) else event, result, self._clock() - started, traits=traits
            )
        return result

    def _named_outcome(self, result: Outcome) -> Outcome:
        if self._named:
            result.integration = self.integration
        return result

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")

    def _track(self, work: Awaitable[Outcome]) -> asyncio.Future[Outcome]:
        """Count work as in flight from the moment it is scheduled, so ``close`` waits for it."""
        self._inflight += 1
        self._idle.clear()
        future = asyncio.ensure_future(work)

        def done(_: Any) -> None:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

        future.add_done_callback(done)
        return future


async def _stop_source(
    source: AsyncIterator[list[tuple[int, Any]]], fetching: asyncio.Future[list[tuple[int, Any]]] | None
) -> list[tuple[int, Any]]:
    """Cancel the fetch under way and close the source; a batch that arrived meanwhile is returned, not lost."""
    late: list[tuple[int, Any]] = []
    if fetching is not None:
        fetching.cancel()
        await asyncio.wait([fetching])
        if not fetching.cancelled() and fetching.exception() is None:
            late = fetching.result()
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception as exc:  # noqa: BLE001 - the source's own cleanup cannot cost an outcome
            log.warning("the event source failed while closing: %s", type(exc).__name__)
    return late
