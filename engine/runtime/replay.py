"""Replaying dead letters: each letter rebuilt into its request and sent again, or left with the reason.

Part of :class:`engine.runtime.Engine` (its ``replay_*`` methods and the
letters it owns); what a letter may be rebuilt into is :mod:`.letters`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

from .. import outcome as oc
from ..delivery.trail import start_trail
from ..outcome import Outcome
from ..state.dead_letters import delete_letters
from ..state.record import integration_name
from .journalling import already_delivered
from .letters import letter_context, prepared_from_letter

if TYPE_CHECKING:
    from ..language.model import Preset
    from ..language.settings import Settings
    from ..pipeline.prepare import Pipeline, Prepared
    from ..redaction import Redactor
    from ..state.buffered import BufferedDeadLetters
    from ..state.record import Recorder


class Replaying:
    """The Engine's dead-letter replay; the engine provides what is declared below."""

    if TYPE_CHECKING:
        preset: Preset
        settings: Settings
        pipeline: Pipeline
        redactor: Redactor
        dead_letters: BufferedDeadLetters
        recorder: Recorder | None
        concurrency: int
        name: str
        integration: str
        _named: bool
        _clock: Callable[[], float]

        async def start(self) -> Any: ...
        def _track(self, work: Awaitable[Outcome]) -> asyncio.Future[Outcome]: ...
        def _named_outcome(self, result: Outcome) -> Outcome: ...
        def _delivered_at(self, key: str) -> float | None: ...
        def _sender_view(self, prepared: Prepared) -> dict[str, Any]: ...
        async def _finish(self, result: Outcome) -> Outcome: ...
        async def _deliver(self, prepared: Prepared, record: bool = True, key: str | None = None) -> Outcome: ...

    async def replay_dead_letters(self, ids: Collection[str] | None = None) -> list[Outcome]:
        """Re-send every dead letter of this preset (or those with these ``ids``); keep only those that still fail.

        A letter that cannot be replayed here (unknown action, or recorded for
        another origin than the settings name now) stays in the store, and its
        outcome says why. A letter whose event the journal says was delivered
        since (a rerun sent it) is removed without sending it again. Each
        letter is removed or updated on its own, so letters a concurrent run
        adds meanwhile are never touched.
        """
        return [result async for result in self.replay_each_dead_letter(ids)]

    async def replay_each_dead_letter(self, ids: Collection[str] | None = None) -> AsyncIterator[Outcome]:
        """:meth:`replay_dead_letters`, one outcome at a time, in the store's order.

        Letters are read a page at a time and at most a few times
        ``concurrency`` are replayed at once, so memory does not grow with the
        number of letters. Letters a concurrent run adds meanwhile are not
        replayed (nor touched).
        """
        await self.start()
        window = self.concurrency * 4
        pending: collections.deque[asyncio.Future[Outcome]] = collections.deque()
        for page in self.letter_pages():
            for entry in page:
                if ids is not None and entry.get("id") not in ids:
                    continue
                pending.append(self._track(self._replay(entry)))
                while len(pending) >= window or (pending and pending[0].done()):
                    yield self._named_outcome(await pending.popleft())
        while pending:
            yield self._named_outcome(await pending.popleft())

    async def _replay(self, entry: dict[str, Any]) -> Outcome:
        started = self._clock()
        # The trail of its requests, for the record (see Processing._deliver_noted); none for batched actions,
        # whose requests carry many events.
        batched = any(action.batch is not None for action in self.preset.actions.values())
        trail = start_trail() if self.recorder is not None and not batched else None
        result = await self._replay_letter(entry)
        if self.recorder is not None and result.cause != oc.NOT_SENT:
            self.recorder.note(None, result, self._clock() - started, replay=True, trail=trail)
        return result

    async def _replay_letter(self, entry: dict[str, Any]) -> Outcome:
        letter_id, key = entry.get("id"), entry.get("key")
        prepared = prepared_from_letter(entry, self.preset, self.settings, self.pipeline)
        if isinstance(prepared, str):
            return Outcome(
                entry.get("index"), entry.get("messageId"), oc.FAILED, cause=oc.NOT_REPLAYABLE, detail=prepared
            )
        since = self._delivered_at(key) if isinstance(key, str) else None
        if since is not None and since >= float(entry.get("dead_lettered_at") or 0):
            self.dead_letters.remove(str(letter_id))
            return await self._finish(already_delivered(prepared, since, self._sender_view(prepared)))
        result = await self._deliver(prepared, record=False, key=key if isinstance(key, str) else None)
        if result.cause == oc.NOT_SENT:
            return result  # stopped before it was sent: the letter stays as it was
        if result.outcome == oc.DELIVERED:
            self.dead_letters.remove(str(letter_id))
        else:
            # The context too: a flow that got further this time resumes from there next time.
            self.dead_letters.update(
                {
                    **entry,
                    "context": letter_context(prepared, self.redactor),
                    "cause": result.cause,
                    "detail": result.detail,
                    "last_request": result.request,
                    "last_response": result.response,
                    "attempts": (entry.get("attempts") or 0) + (result.attempts or 0),
                }
            )
        return result

    def delete_dead_letters(self, ids: Collection[str]) -> list[str]:
        """Forget these dead letters of this engine without sending them (``dlq delete``); the ids removed.

        An id that is not one of this engine's letters is left alone and is
        not in the answer. Nothing is sent, so no credential is needed.
        """
        return delete_letters(self.dead_letters, self.letter_pages(), ids)

    def letter_pages(self) -> Iterator[list[dict[str, Any]]]:
        """This engine's dead letters, a page at a time: those kept under its name, and those of the same
        integration kept under the other one: a named integration takes a one-preset run's (kept under the
        preset: the console replays them so), a run takes those ``serve PRESET`` kept under the integration
        named after the preset."""
        yield from self.dead_letters.pages(self.name)
        if not self._named:
            if self.integration != self.name:
                yield from self.dead_letters.pages(self.integration)
            return
        for page in self.dead_letters.pages(self.preset.name):
            mine = [e for e in page if (e.get("integration") or integration_name(self.preset.name)) == self.integration]
            if mine:
                yield mine

    def dead_letter_count(self) -> int:
        """How many letters :meth:`letter_pages` holds (counted where the store can, without reading them)."""
        if not self._named:
            extra = self.dead_letters.count(self.integration) if self.integration != self.name else 0
            return self.dead_letters.count(self.name) + extra
        return sum(len(page) for page in self.letter_pages())
