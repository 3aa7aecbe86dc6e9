"""Delivering one prepared event: once (the journal, and a copy being sent now), in a slot, to its one outcome.

Part of :class:`engine.runtime.Engine`. A delivered event is recorded in the
journal before its outcome is handed out, and any dead letter an earlier run
left for it is removed; a failed one is kept as a dead letter with its masked
request and the context a replay needs. An unforeseen failure is still an
outcome, and a failing callback never loses one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import outcome as oc
from ..loggers import package_logger
from ..outcome import Outcome
from ..state.dead_letters import entry_for
from .journalling import already_delivered
from .letters import letter_context
from .stopping import stopped_outcome

if TYPE_CHECKING:
    from ..delivery.batch import Batcher
    from ..delivery.sender import Sender
    from ..language.model import Preset
    from ..pipeline.prepare import Prepared
    from ..redaction import Redactor
    from ..state.buffered import BufferedDeadLetters, BufferedJournal
    from ..state.record import Recorder
    from .stopping import Stop

# The Engine's parts log as the Engine: one logger, ``engine.runtime``.
log = package_logger(__package__)


class Delivering:
    """The Engine's delivery of a prepared event; the engine provides what is declared below."""

    if TYPE_CHECKING:
        preset: Preset
        redactor: Redactor
        recorder: Recorder | None
        journal: BufferedJournal
        dead_letters: BufferedDeadLetters
        name: str
        integration: str
        on_outcome: Callable[[Outcome], Any] | None
        _sender: Sender | None
        _batcher: Batcher | None
        _slots: asyncio.Semaphore | None
        _sending: dict[str, asyncio.Future[None]]
        _active: dict[asyncio.Future[Outcome], list[int]]
        _stop: Stop | None

    async def _deliver_once(self, prepared: Prepared, key: str) -> Outcome:
        """Deliver unless this event was already delivered (journal), or a copy of it is being sent now."""
        while (earlier := self._sending.get(key)) is not None:
            await asyncio.wait([earlier])  # never cancels the first copy's future
        since = self._delivered_at(key)
        if since is not None:
            return await self._finish(already_delivered(prepared, since, self._sender_view(prepared)))
        done = asyncio.get_running_loop().create_future()
        self._sending[key] = done
        try:
            return await self._deliver(prepared, key=key)
        finally:
            del self._sending[key]
            done.set_result(None)

    def _delivered_at(self, key: str) -> float | None:
        try:
            return self.journal.delivered_at(key)
        except OSError as exc:  # an unreadable journal may cost a re-send (merged by the upsert), never the event
            log.error("state: could not read the delivery journal (%s)", exc.strerror or type(exc).__name__)
            return None

    def _sender_view(self, prepared: Prepared) -> dict[str, Any]:
        """The event's first request as a person may see it (credential masked)."""
        assert self._sender is not None
        return self._sender.original_request(prepared)

    async def _deliver(self, prepared: Prepared, record: bool = True, key: str | None = None) -> Outcome:
        assert self._sender is not None and self._slots is not None
        try:
            result = await self._send(prepared)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing is lost: an unforeseen failure is still an outcome
            log.error("event %s: delivery failed unexpectedly: %s", prepared.index, type(exc).__name__)
            result = Outcome(
                prepared.index,
                prepared.message_id,
                oc.DEAD_LETTERED,
                cause=oc.INTERNAL_ERROR,
                detail=f"delivery failed unexpectedly ({type(exc).__name__}); kept for replay",
                request=self._sender.original_request(prepared),
            )
        if result.outcome == oc.DELIVERED and key is not None:
            # Before the outcome is handed out: an outcome seen as delivered is always in the journal.
            try:
                await self.journal.record_soon(key)  # with the other deliveries of this turn: one transaction
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the delivery happened; at worst a rerun merges it again
                log.error(
                    "event %s: could not record the delivery in the journal: %s", prepared.index, type(exc).__name__
                )
            if record:
                # A letter an earlier run left for this event (it was killed, or gave up) is obsolete now:
                # an event is delivered or in the dead letters, never both.
                try:
                    self.dead_letters.discard(self.name, key)
                except Exception as exc:  # noqa: BLE001 - a stale letter is removed by replay, unsent
                    log.warning(
                        "event %s: could not remove its earlier dead letter: %s", prepared.index, type(exc).__name__
                    )
        if record and result.outcome == oc.DEAD_LETTERED:
            try:
                kept = self.dead_letters.add(
                    entry_for(
                        self.preset.name,
                        prepared.action.name,
                        result,
                        self._sender.original_request(prepared),
                        key,
                        letter_context(prepared, self.redactor),
                        integration=self.integration,
                        filed_under=self.name,
                    )
                )
            except (OSError, TypeError, ValueError) as exc:
                log.error("event %s: could not write the dead letter: %s", prepared.index, type(exc).__name__)
                result.detail = (
                    f"{result.detail}; NOT kept: the dead-letter store could not be written ({type(exc).__name__})"
                )
            else:
                if not kept:
                    result.detail = (
                        f"{result.detail}; the dead-letter store cannot be written now (disk full?): "
                        "the letter is kept in memory and written as soon as it can be"
                    )
        return await self._finish(result)

    async def _send(self, prepared: Prepared) -> Outcome:
        """Send in a task of its own, so that :meth:`stop` can end it and the event still gets its outcome."""
        sent = [0]
        if self._stop is not None:
            return stopped_outcome(prepared, 0, self._stop, self._sender_view(prepared))
        work = asyncio.ensure_future(self._send_when_free(prepared, sent))
        self._active[work] = sent
        try:
            return await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop is None or not work.cancelled() or (task is not None and task.cancelling()):
                raise  # the host cancelled this event, not stop()
            return stopped_outcome(prepared, sent[0], self._stop, self._sender_view(prepared))
        finally:
            del self._active[work]
            if not work.done():
                work.cancel()

    async def _send_when_free(self, prepared: Prepared, sent: list[int]) -> Outcome:
        assert self._sender is not None and self._slots is not None
        if prepared.action.batch is not None and self._batcher is not None:
            return await self._batcher.submit(prepared, sent)  # takes a slot per request, not per event
        async with self._slots:
            return await self._sender.deliver(prepared, sent)

    async def _finish(self, result: Outcome) -> Outcome:
        """Hand the outcome to the host's callback; a failing callback must not lose the outcome."""
        if self.on_outcome is not None:
            try:
                answer = self.on_outcome(result)
                if inspect.isawaitable(answer):
                    await answer
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.error("on_outcome callback failed for event %s: %s", result.index, type(exc).__name__)
        return result
