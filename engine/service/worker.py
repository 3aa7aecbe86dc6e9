"""A worker: read the queue, run each event through the engine, acknowledge it with its outcome.

The loop only uses :class:`~engine.state.queue.EventQueue`, so the embedded
SQLite queue, Redis Streams, or a Kafka consumer (poll, commit offsets in
order, rebalance) all plug in the same way.

* **At least once, delivered once.** An entry is acknowledged only after
  its outcome is known, and an outcome counted as delivered is in the
  delivery journal before it is handed out (:class:`~engine.runtime.Engine`).
  So a worker killed at any point leaves its entries to be claimed by
  another after the visibility timeout, which finds the deliveries already
  made in the journal and does not send them again.
* **One outcome per event.** The queue publishes the outcome and
  acknowledges the entry in one step (:meth:`EventQueue.ack`); the outcomes
  that finish while one acknowledgement is under way go together in the
  next (one round trip for all of them, not one each). The line
  printed on stdout (``emit``) goes out just before: after a kill between
  the two, the event's line is printed again by whoever finishes it, never
  lost.
* **Two workers, one event.** With ``locks`` (Redis), an event's key is
  locked while it is worked on: a second copy waits for the first, then
  finds it in the journal.
* **Alive is visible.** While an entry is this worker's (from its read or
  claim until its acknowledgement, a suspect waiting for its turn included)
  its lease (and its lock) is renewed every third of the visibility timeout,
  so only a dead worker's entries are claimed, however long a delivery waits
  on a rate limit or an acknowledgement on a slow link.
* **Draining.** When ``stop`` is set, nothing new is read; what was read is
  finished and acknowledged, then :meth:`run` returns.
* **A bad entry is one outcome, not a stuck batch.** An entry that is not
  UTF-8, not JSON or nested too deep (another writer put it there) ends as
  ``invalid_event`` naming the problem, and is acknowledged; a lone
  surrogate is escaped (:mod:`engine.service.event_json`).
* **Poison.** An entry handed out again (its worker stopped without
  acknowledging it) is suspect: suspects are worked on one at a time, with
  nothing else in flight, so a crash counts against the entry that caused it
  and not its neighbours. An entry handed out more than ``max_deliveries``
  times is not tried again: it becomes a dead letter with cause ``poison``,
  carrying the error its workers stopped on, and is acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from .. import outcome as oc
from ..event_identity import message_id_of
from ..log_context import current_integration
from ..loggers import package_logger
from ..outcome import Outcome
from ..runtime import Engine
from ..state.dead_letters import entry_for
from ..state.journal import event_key
from ..state.queue import EventQueue, QueuedEvent
from . import event_json
from .metrics import NO_REASON, Metrics

log = package_logger(__name__)

VISIBILITY_SECONDS = 30.0
BATCH = 64
READ_BLOCK_SECONDS = 1.0
LOCK_POLL_SECONDS = 0.05
MAX_DELIVERIES = 5


class KeyLocks(Protocol):
    owner: str  # a queue that releases locks with its acknowledgement (``acks_locks``) checks it is theirs

    async def acquire(self, keys: Sequence[str]) -> list[bool]: ...
    async def renew(self, keys: Sequence[str]) -> None: ...
    async def release(self, keys: Sequence[str]) -> None: ...


class Worker:
    def __init__(
        self,
        engine: Engine,
        queue: EventQueue,
        consumer: str,
        *,
        metrics: Metrics | None = None,
        locks: KeyLocks | None = None,
        lock_name: Callable[[str], str] | None = None,
        emit: Callable[[dict[str, Any]], None] | None = None,
        visibility_seconds: float = VISIBILITY_SECONDS,
        batch: int = BATCH,
        read_block_seconds: float = READ_BLOCK_SECONDS,
        max_deliveries: int = MAX_DELIVERIES,
        clock: Callable[[], float] = time.time,
        integration: str | None = None,
    ) -> None:
        self.engine = engine
        self.integration = integration or engine.integration or engine.preset.name
        self.queue = queue
        self.consumer = consumer
        self.metrics = metrics
        self.locks = locks
        self.lock_name = lock_name or (lambda key: key)
        self.emit = emit
        self.visibility = visibility_seconds
        self.batch = batch
        self.read_block = read_block_seconds
        self.max_deliveries = max_deliveries
        self._clock = clock
        self._idle = asyncio.Event()  # nothing in flight: a suspect entry may go now
        self._idle.set()
        self._entries: dict[int, QueuedEvent] = {}  # index -> entry, while in flight
        self._held: list[QueuedEvent] = []  # a suspect read, waiting to be worked on alone
        self._locked: dict[int, str] = {}
        self._next_index = 0
        self._mints_seen = 0
        self.finished = 0
        self._unacked: list[tuple[int, QueuedEvent, dict[str, Any], Outcome]] = []  # finished, to acknowledge
        self._acker: asyncio.Future[None] | None = None
        self._counters: dict[tuple[str, str], Any] = {}  # (outcome, reason) -> its counter: labels() once, not per lead
        self._latency: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then finish what was read."""
        current_integration.set(self.integration)  # this task's, and every task it starts: log lines name it
        beat = asyncio.ensure_future(self._heartbeat(stop))
        try:
            # Every outcome known at once as one list: this loop resumes once per list, not once per outcome.
            async for results in self.engine.process_batches_together(self._batches(stop)):
                for result in results:
                    await self._finish(result)
            if self._acker is not None:
                await self._acker  # drained: every outcome acknowledged before run returns
        except asyncio.CancelledError:
            raise  # a drain ran out of time: not the entries' fault
        except BaseException as exc:
            await self._note_failure(exc)
            raise
        finally:
            beat.cancel()
            if self._acker is not None and not self._acker.done():
                self._acker.cancel()  # the drain ran out of time, or the worker failed: claimed after the timeout
            await asyncio.gather(beat, *([self._acker] if self._acker is not None else []), return_exceptions=True)

    async def _note_failure(self, exc: BaseException) -> None:
        """The worker stops on an error: note it on the entries it holds, for the poison letter if it recurs."""
        ids = [entry.id for entry in self._entries.values()]
        error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        log.error(
            "worker %s: stopped on an error while holding %d event(s): %s",
            self.consumer,
            len(ids),
            self.engine.redactor.redact(error),
        )
        try:
            await self.queue.fail(self.consumer, ids, self.engine.redactor.redact(error))
        except Exception as note_error:  # noqa: BLE001 - the delivery count still tells a poison entry
            log.error(
                "worker %s: could not note the error on its entries (%s)", self.consumer, type(note_error).__name__
            )

    # -- reading ----------------------------------------------------------------
    async def _batches(self, stop: asyncio.Event) -> AsyncIterator[list[tuple[int, Any]]]:
        next_claim = 0.0
        while not stop.is_set():
            entries: list[QueuedEvent] = []
            try:
                if self._clock() >= next_claim:
                    next_claim = self._clock() + self.visibility / 2
                    entries = await self.queue.claim(self.consumer, self.visibility, self.batch)
                    if entries:
                        log.warning(
                            "worker %s: took over %d event(s) a stopped worker had left unfinished",
                            self.consumer,
                            len(entries),
                        )
                if not entries:
                    entries = await self.queue.read(self.consumer, self.batch, self.read_block)
            except (OSError, ConnectionError) as exc:
                log.error(
                    "worker %s: cannot read the queue (%s); trying again",
                    self.consumer,
                    getattr(exc, "strerror", None) or type(exc).__name__,
                )
                await _sleep_or_stop(stop, 1.0)
                continue
            except Exception as exc:  # noqa: BLE001 - a queue error (Redis down) must not end the worker
                log.error("worker %s: cannot read the queue (%s); trying again", self.consumer, type(exc).__name__)
                await _sleep_or_stop(stop, 1.0)
                continue
            fresh = [entry for entry in entries if entry.deliveries <= 1 or entry.deliveries > self.max_deliveries]
            # The least suspect first: an entry that stopped workers more often waits behind the others.
            suspects = sorted(
                (entry for entry in entries if 1 < entry.deliveries <= self.max_deliveries),
                key=lambda entry: entry.deliveries,
            )
            if suspects:
                # One at a time, alone: if it stops this worker again, nothing else was handed out with it to
                # be counted. The others go back uncounted at once and come again with the next claim; the
                # first is held from now on, its lease renewed while the rest of its batch is yielded and
                # finishes (unrenewed, another worker would claim it: counted again, and worked on twice).
                await self._release(suspects[1:])
                next_claim = 0.0
                self._held = suspects[:1]
            if fresh:
                yield await self._admit(fresh, stop)
            if suspects:
                await self._until_idle(stop)
                self._held = []
                if stop.is_set():
                    await self._release(suspects[:1])
                    break
                yield await self._admit(suspects[:1], stop)
                await self._until_idle(stop)

    async def _release(self, entries: list[QueuedEvent]) -> None:
        if not entries:
            return
        try:
            await self.queue.release(self.consumer, entries)
        except Exception as exc:  # noqa: BLE001 - they are handed out again after the visibility timeout
            log.error(
                "worker %s: could not give back %d event(s) (%s)", self.consumer, len(entries), type(exc).__name__
            )

    async def _until_idle(self, stop: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(self._idle.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([waiter, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopping.cancel()

    async def _admit(self, entries: list[QueuedEvent], stop: asyncio.Event) -> list[tuple[int, Any]]:
        items: list[tuple[int, Any]] = []
        keys: dict[int, str] = {}
        journal_keys: dict[int, str] = {}
        for entry in entries:
            index = self._next_index
            self._next_index += 1
            self._entries[index] = entry
            self._idle.clear()
            if entry.problem is not None:
                items.append((index, oc.dropped(index, None, oc.INVALID_EVENT, entry.problem)))
                continue
            try:
                event = event_json.loads(entry.body)
            except event_json.EventJsonError as exc:
                items.append((index, oc.dropped(index, None, oc.INVALID_EVENT, f"the queued entry {exc}")))
                continue
            if entry.deliveries > self.max_deliveries:
                items.append((index, self._poison(index, entry, event)))
                continue
            items.append((index, event))
            if self.locks is not None:
                journal_keys[index] = event_key(event)
                keys[index] = self.lock_name(journal_keys[index])
        if keys:
            await self._lock(keys)
            self._prefetch([journal_keys[index] for index in keys if index in self._locked])
        # What the batch's events will be joined with, read in one round trip (the intake stored it already).
        self.engine.pipeline.memory.prefetch([event for _, event in items if not isinstance(event, Outcome)])
        return items

    def _prefetch(self, keys: list[str]) -> None:
        """The journal of the batch's locked events, read in one round trip instead of one per event.

        Only for events whose locks are held: no other worker can deliver them before this one asks.
        """
        prefetch = getattr(self.engine.journal, "prefetch", None)
        if prefetch is None or not keys:
            return
        try:
            prefetch(keys)
        except Exception as exc:  # noqa: BLE001 - each event then asks the journal on its own
            log.warning("worker %s: could not read the journal ahead (%s)", self.consumer, type(exc).__name__)

    def _poison(self, index: int, entry: QueuedEvent, event: Any) -> Outcome:
        """Not tried again: a dead letter holding the event and the error it kept failing with."""
        message_id = message_id_of(event)
        failed = entry.failure or "each worker holding it stopped without an error (killed, or out of memory?)"
        result = Outcome(
            index,
            message_id,
            oc.DEAD_LETTERED,
            cause=oc.POISON,
            detail=f"handed to a worker {entry.deliveries - 1} times and never finished (the limit is "
            f"{self.max_deliveries} deliveries): {failed}; kept with the event, not tried again",
            attempts=entry.deliveries - 1,
        )
        letter = {
            **entry_for(
                self.engine.preset.name,
                "",
                result,
                {},
                event_key(event),
                integration=self.engine.integration,
                filed_under=self.engine.name,
            ),
            "request": None,
            "event": event,
        }
        try:
            kept = self.engine.dead_letters.add(letter)
        except (OSError, TypeError, ValueError) as exc:
            log.error(
                "worker %s: could not write the poison letter of entry %s: %s",
                self.consumer,
                entry.id,
                type(exc).__name__,
            )
            result.detail = f"{result.detail}; NOT kept: the dead-letter store could not be written"
        else:
            if kept is False:
                result.detail = (
                    f"{result.detail}; the dead-letter store cannot be written now (disk full?): "
                    "the letter is kept in memory and written as soon as it can be"
                )
        return result

    async def _lock(self, keys: dict[int, str]) -> None:
        """Lock every event's key, in order; one another worker holds is waited for (it finishes, or expires)."""
        assert self.locks is not None
        waiting = dict(keys)
        while waiting:
            try:
                taken = await self.locks.acquire(list(waiting.values()))
            except Exception as exc:  # noqa: BLE001 - without the lock the journal still stops most repeats
                log.error(
                    "worker %s: cannot take event locks (%s); going on without them", self.consumer, type(exc).__name__
                )
                return
            for (index, key), ok in zip(list(waiting.items()), taken, strict=True):
                if ok:
                    self._locked[index] = key
                    del waiting[index]
            if waiting:
                await asyncio.sleep(LOCK_POLL_SECONDS)

    # -- finishing --------------------------------------------------------------
    async def _finish(self, result: Outcome) -> None:
        index = result.index if isinstance(result.index, int) else -1
        entry = self._entries.get(index)
        record = result.to_dict()
        if entry is not None:
            # Which queue entry, and which worker: an operator following `tail` can tell them apart.
            record = {"entry": entry.id, "worker": self.consumer, **record}
        if self.emit is not None:
            # Printed before the acknowledgement: a kill between the two re-reads the entry and prints
            # it again (the journal makes that "already delivered"), where the other order loses the line.
            self.emit(record)
        if entry is None:
            key = self._locked.pop(index, None)
            if key is not None and self.locks is not None:
                await self._release_locks([key])
            self._counted(result, None)
            return
        # Acknowledged with the others that finish meanwhile: one call to the queue for all of them.
        self._unacked.append((index, entry, record, result))
        if self._acker is None or self._acker.done():
            self._acker = asyncio.ensure_future(self._ack_waiting())

    async def _ack_waiting(self) -> None:
        """Acknowledge every finished entry waiting, in one call to the queue each time, until none waits.

        An entry stays this worker's (its lease and lock renewed) until its acknowledgement is done: during a
        slow one, another worker must not claim it. A queue that can (Redis) releases the events' locks in
        the acknowledgement's own round trip.
        """
        while self._unacked:
            done, self._unacked = self._unacked, []
            keys = [self._locked[index] for index, *_ in done if index in self._locked]
            combined = bool(keys) and self.locks is not None and getattr(self.queue, "acks_locks", False)
            await self._ack([(entry.id, record) for _, entry, record, _ in done], keys if combined else [])
            for index, *_ in done:
                del self._entries[index]
                self._locked.pop(index, None)
            if not self._entries:
                self._idle.set()
            if keys and not combined:
                await self._release_locks(keys)
            for _, entry, _, result in done:
                self._counted(result, entry)

    async def _release_locks(self, keys: list[str]) -> None:
        assert self.locks is not None
        try:
            await self.locks.release(keys)
        except Exception:  # noqa: BLE001 - they expire on their own
            pass

    def _counted(self, result: Outcome, entry: QueuedEvent | None) -> None:
        self.finished += 1
        if self.metrics is not None:
            name = self.integration
            labels = (result.outcome, result.reason or result.cause or NO_REASON)
            counter = self._counters.get(labels)
            if counter is None:
                counter = self._counters[labels] = self.metrics.outcomes.labels(name, *labels)
            counter.inc()
            if entry is not None and entry.enqueued_at and result.outcome == oc.DELIVERED:
                if self._latency is None:
                    self._latency = self.metrics.latency.labels(name)
                self._latency.observe(max(0.0, self._clock() - entry.enqueued_at))
            mints = self.engine.mints
            if mints > self._mints_seen:
                self.metrics.refreshes.labels(name).inc(mints - self._mints_seen)
                self._mints_seen = mints

    async def _ack(self, done: list[tuple[str, dict[str, Any]]], unlock: list[str]) -> None:
        """Acknowledge with the outcomes; if the queue cannot take them now, keep trying (never drop one)."""
        delay = 0.1
        while True:
            try:
                if unlock and self.locks is not None:
                    await self.queue.ack(done, unlock=unlock, owner=self.locks.owner)  # type: ignore[call-arg]
                else:
                    await self.queue.ack(done)
                return
            except Exception as exc:  # noqa: BLE001 - the outcome is known; only its acknowledgement waits
                log.error(
                    "worker %s: cannot acknowledge %s (%s); retrying",
                    self.consumer,
                    f"entry {done[0][0]}" if len(done) == 1 else f"{len(done)} entries from {done[0][0]}",
                    type(exc).__name__,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.visibility / 3)
            ids = [entry.id for entry in (*self._entries.values(), *self._held)]
            try:
                await self.queue.touch(self.consumer, ids)
                if self.locks is not None:
                    await self.locks.renew(list(self._locked.values()))
            except Exception as exc:  # noqa: BLE001
                log.error("worker %s: cannot renew its leases (%s)", self.consumer, type(exc).__name__)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def outcome_line(record: dict[str, Any], encoding: str | None = None) -> str:
    """The outcome's line on stdout, without its newline: the same compact form as ``run``'s."""
    return oc.outcome_json(record, encoding)


__all__ = ["KeyLocks", "Outcome", "Worker", "outcome_line"]
