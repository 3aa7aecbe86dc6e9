"""Batching: many events' documents in one request, each item's result mapped back to its own event.

An action with ``batch`` does not send an event when it comes: the event
waits, up to ``max_wait_seconds``, for others of the same action; at
``max_items``, when the wait is over, or when the engine closes, they go in
one request whose body the preset builds from their documents.

* The response rules judge the answer as a whole: a request that is
  retried, refused or dead-lettered is so for every item in it.
* An answer the rules deliver is read item by item with ``item_error``:
  nothing means the item went through; a string fails that item alone; a
  ``{"retry": reason}`` puts it back to go with the next request, so only
  the items that failed are sent again (up to ``retries.max_attempts``).
* One record per request: an item whose key (``delivery.order_by``) is
  already waiting goes in the next request, and the requests of one action
  go one after the other, so two writes to one record never race.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import outcome as oc
from ..language.expressions import ExpressionError, ExpressionLimitError
from ..outcome import Outcome
from ..pipeline.prepare import Prepared
from .exchange import Sending, Step
from .transport import HttpRequest


@dataclass(eq=False)
class _Item:
    prepared: Prepared
    sent: list[int]  # the engine's count of this event's requests on the wire (see Engine.stop)
    future: asyncio.Future[Outcome]
    key: str | None
    attempts: int = 0  # requests this item went out in, over every batch
    tries: int = 0  # batches it was put back from
    detail: list[str] = field(default_factory=list)


class Batcher:
    """One per engine: a queue per batched action, a timer per queue, one request at a time per action."""

    def __init__(
        self,
        sender: Sending,
        settings: Mapping[str, Any],
        slots: asyncio.Semaphore,
        sleep: Callable[[float], Awaitable[None]],
        key_of: Callable[[Prepared], str | None],
    ) -> None:
        self.sender = sender
        self.public = settings
        self._slots = slots
        self._sleep = sleep
        self._key_of = key_of
        self._queues: dict[str, list[_Item]] = {}
        self._timers: dict[str, asyncio.Future[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sending: set[asyncio.Future[None]] = set()

    async def submit(self, prepared: Prepared, sent: list[int]) -> Outcome:
        """Wait for this event's place in a request, and for that request's answer; the event's outcome."""
        item = _Item(prepared, sent, asyncio.get_running_loop().create_future(), self._key_of(prepared))
        self._add(item)
        return await item.future  # cancelling the caller cancels the future: the item is left out

    async def flush_all(self) -> None:
        """Send what waits now (the engine is closing), and wait for every request under way."""
        while True:
            for name in list(self._queues):
                self._flush(name)  # items put back by a request that just ended go too
            if not self._sending:
                return
            await asyncio.wait(list(self._sending))

    def cancel_all(self) -> None:
        for future in [*self._timers.values(), *self._sending]:
            future.cancel()

    # -- filling ----------------------------------------------------------------
    def _add(self, item: _Item, *, front: bool = False) -> None:
        name = item.prepared.action.name
        spec = item.prepared.action.batch
        assert spec is not None
        if item.key is not None and any(other.key == item.key for other in self._live(name)):
            self._flush(name)  # the same record already waits: that request goes first
        queue = self._queues.setdefault(name, [])
        if front:
            queue.insert(0, item)
        else:
            queue.append(item)
        if len(self._live(name)) >= spec.max_items:
            self._flush(name)
        elif name not in self._timers:
            self._timers[name] = asyncio.ensure_future(self._wait_then_flush(name, spec.max_wait_seconds))

    def _live(self, name: str) -> list[_Item]:
        return [item for item in self._queues.get(name, []) if not item.future.done()]

    async def _wait_then_flush(self, name: str, seconds: float) -> None:
        await self._sleep(seconds)
        if self._timers.get(name) is asyncio.current_task():
            del self._timers[name]
        self._flush(name)

    def _flush(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        queue = self._live(name)
        if not queue:
            self._queues.pop(name, None)
            return
        spec = queue[0].prepared.action.batch
        assert spec is not None
        batch, rest = queue[: spec.max_items], queue[spec.max_items :]
        self._queues[name] = rest
        task = asyncio.ensure_future(self._send(name, batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        if len(rest) >= spec.max_items:
            self._flush(name)
        elif rest:
            self._timers[name] = asyncio.ensure_future(self._wait_then_flush(name, spec.max_wait_seconds))

    # -- sending ----------------------------------------------------------------
    async def _send(self, name: str, batch: list[_Item]) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):  # one request of an action at a time
            async with self._slots:
                live = [item for item in batch if not item.future.done()]
                if not live:
                    return
                try:
                    results = await self._deliver(live)
                except asyncio.CancelledError:
                    for item in live:
                        item.future.cancel()
                    raise
                except Exception as exc:  # noqa: BLE001 - each event's delivery reports it as its own
                    for item in live:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    return
        for item, result in results:
            if item.future.done():
                continue
            if result is None:
                self._add(item, front=True)  # sent again with the next request
            else:
                item.future.set_result(result)

    async def _deliver(self, live: list[_Item]) -> list[tuple[_Item, Outcome | None]]:
        first = live[0].prepared
        action = first.action
        spec = action.batch
        assert spec is not None
        try:
            body = spec.body.evaluate({"items": [item.prepared.body for item in live], "settings": self.public})
        except ExpressionError as exc:
            cause = oc.EXPRESSION_LIMIT if isinstance(exc, ExpressionLimitError) else oc.BATCH_ERROR
            return [
                (
                    item,
                    self.sender.failed(
                        item.prepared, cause, f"actions.{action.name}.batch.body: {exc}", None, item.attempts
                    ),
                )
                for item in live
            ]
        request = HttpRequest(first.method, first.url, dict(first.headers), body=body)
        for item in live:
            item.sent[0] += 1  # on the wire from now on, for every event in it
        attempts = [0]
        step = await self.sender.send(first, request, attempts, allow_upsert=False)
        results: list[tuple[_Item, Outcome | None]] = []
        for index, item in enumerate(live):
            item.attempts += attempts[0]
            results.append((item, self._result(item, index, len(live), step)))
        return results

    def _result(self, item: _Item, index: int, size: int, step: Step) -> Outcome | None:
        """This item's outcome from the request's answer; None: send it again with the next request."""
        spec = item.prepared.action.batch
        assert spec is not None
        outcome = self.sender.outcome(item.prepared, step, item.attempts)
        if step.verdict != "deliver":
            return outcome
        answer = step.exchange.response.rule_input() if step.exchange and step.exchange.response else {}
        where = f"actions.{item.prepared.action.name}.batch.item_error"
        try:
            verdict = (
                spec.item_error.evaluate({**answer, "item": item.prepared.body, "index": index})
                if spec.item_error is not None
                else None
            )
        except ExpressionError as exc:
            return self._with(outcome, oc.FAILED, oc.BATCH_ERROR, f"{where}: {exc}")
        if verdict in (None, False, ""):
            outcome.detail = f"delivered in a request of {size} item(s)" + (
                f" (after: {'; '.join(item.detail)})" if item.detail else ""
            )
            return outcome
        if isinstance(verdict, dict) and "retry" in verdict:
            reason = str(verdict.get("retry"))
            item.tries += 1
            if item.tries < self.sender.delivery.retries.max_attempts:
                item.detail.append(reason)
                return None
            return self._with(
                outcome,
                oc.DEAD_LETTERED,
                oc.ITEM_FAILED,
                f"item {index} of a request of {size} was refused {item.tries} times: {reason}",
            )
        return self._with(outcome, oc.FAILED, oc.ITEM_FAILED, f"item {index} of a request of {size}: {verdict}")

    def _with(self, outcome: Outcome, kind: str, cause: str, detail: str) -> Outcome:
        outcome.outcome, outcome.cause, outcome.detail = kind, cause, self.sender.redactor.redact(detail)
        return outcome
