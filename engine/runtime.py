"""The embedding API: one engine per preset connection, living in the host's event loop.

    async with Engine.from_preset("outreach/lead-capture", settings, state=".signal-state") as engine:
        outcome = await engine.process(event)

Filtering and transforming happen synchronously inside ``process`` (they are
pure and fast), in the order the host calls it, so identify-then-track
ordering is kept even when deliveries overlap. Delivery is concurrent and
bounded; ``close`` drains what is in flight before closing the session.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from urllib.parse import urlsplit

import aiohttp

from . import outcome as oc
from .delivery.auth import Auth, build_auth
from .delivery.rate_limit import RateLimiter
from .delivery.sender import Sender
from .delivery.transport import AiohttpTransport, Transport
from .language.compiler import load_preset
from .language.model import Preset
from .language.settings import Settings, resolve
from .outcome import Outcome
from .pipeline.identity import IdentityMemory
from .pipeline.prepare import Pipeline, Prepared
from .redaction import Redactor
from .state.dead_letters import (
    DeadLetterStore,
    FileDeadLetters,
    MemoryDeadLetters,
    entry_for,
)
from .state.token_store import FileTokenStore, MemoryTokenStore, TokenStore, fingerprint

OutcomeCallback = Callable[[Outcome], Any]  # may be async

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, preset: Preset, settings: Settings, *, state: str | Path | None = None,
                 token_store: TokenStore | None = None, dead_letters: DeadLetterStore | None = None,
                 on_outcome: OutcomeCallback | None = None, concurrency: int | None = None,
                 session: aiohttp.ClientSession | None = None, transport: Transport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.preset = preset
        self.settings = settings
        self.state_dir = Path(state) / preset.name if state is not None else None
        self.redactor = Redactor(settings.secrets())
        self.concurrency = concurrency or preset.delivery.concurrency
        self.on_outcome = on_outcome
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._own_session = session is None and transport is None
        self._session = session
        self._transport = transport
        self._clock = clock
        self._sender: Sender | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

        auth = preset.auth
        if token_store is None:
            if self.state_dir is not None and auth is not None and auth.is_oauth2:
                client = fingerprint(str(settings[auth.client_id_setting or ""] or ""))
                token_store = FileTokenStore(self.state_dir / f"refresh-token-{client}.json")
            else:
                token_store = MemoryTokenStore()
        self.token_store = token_store
        if dead_letters is None:
            dead_letters = FileDeadLetters(self.state_dir / "dead-letters.jsonl") if self.state_dir else MemoryDeadLetters()
        self.dead_letters = dead_letters

        memory = IdentityMemory(preset.identity.remember, preset.identity.memory_limit, [t.name for t in preset.identity.traits])
        self._identity_path = self.state_dir / "identity.json" if self.state_dir else None
        if self._identity_path and self._identity_path.exists():
            try:
                memory.restore(json.loads(self._identity_path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                pass  # a damaged memory only costs joins, never events
        self.pipeline = Pipeline(preset, settings, memory)
        self.auth: Auth | None = None  # built on start(), with the transport
        self.limiter = RateLimiter.from_spec(preset.delivery.rate_limit, clock=clock, sleep=sleep)

    @classmethod
    def from_preset(cls, preset: str | Preset, settings: Mapping[str, Any] | Settings, **options: Any) -> "Engine":
        """Build from a built-in preset name (or path) and a plain mapping of setting values."""
        compiled = load_preset(preset) if isinstance(preset, str) else preset
        resolved = settings if isinstance(settings, Settings) else resolve(compiled.settings, settings, require=True)
        return cls(compiled, resolved, **options)

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> "Engine":
        if self._sender is None:
            if self._transport is None:
                if self._session is None:
                    timeout = aiohttp.ClientTimeout(total=self.preset.delivery.timeout_seconds)
                    self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
                self._transport = AiohttpTransport(self._session, self.preset.delivery.timeout_seconds)
            self._slots = asyncio.Semaphore(self.concurrency)
            self.auth = build_auth(self.preset.auth, self.settings, self.redactor, self._transport,
                                   self.preset.delivery.retries, store=self.token_store, clock=self._clock,
                                   sleep=self._sleep, rng=self._rng)
            self._sender = Sender(self.preset.delivery, self.settings, self.auth, self.preset.auth, self.limiter,
                                  self.redactor, self._transport, sleep=self._sleep, rng=self._rng)
        return self

    async def __aenter__(self) -> "Engine":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop taking events, wait for in-flight deliveries, persist identity memory, close the session."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._idle.wait()
            self._save_identity()
        finally:
            if self._session is not None and self._own_session:
                await self._session.close()

    @property
    def mints(self) -> int:
        return self.auth.mints if self.auth else 0

    # -- processing ---------------------------------------------------------
    async def process(self, event: Any, index: int | None = None) -> Outcome:
        """Filter, transform and deliver one event; always returns its one outcome."""
        self._check_open()
        await self.start()
        prepared = self.pipeline.prepare(event, index)
        if isinstance(prepared, Outcome):
            return await self._finish(prepared)
        return await self._track(self._deliver(prepared))

    async def process_many(self, events: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Outcome]:
        """Process a stream with bounded concurrency; outcomes come back in input order."""
        async for outcome in self.process_indexed(_enumerate(events)):
            yield outcome

    async def process_indexed(self, items: AsyncIterable[tuple[int, Any]]) -> AsyncIterator[Outcome]:
        """Like :meth:`process_many` for ``(index, event)`` pairs; an :class:`Outcome` item passes through.

        An outcome is yielded as soon as it and every earlier one are known,
        without waiting for the next input (a queue consumer acknowledges in
        order). At most a few times ``concurrency`` deliveries are held at once.
        """
        async for outcome in self.process_batches(_single_batches(items)):
            yield outcome

    async def process_batches(self, batches: AsyncIterable[list[tuple[int, Any]]]) -> AsyncIterator[Outcome]:
        """Like :meth:`process_indexed`, for a source that hands over many events at a time.

        Events are prepared in input order as each batch arrives; a dropped
        event costs no task and no wait, so a stream of page views is about as
        cheap to process here as in a dry run.
        """
        self._check_open()
        await self.start()
        window = self.concurrency * 4
        pending: collections.deque[Outcome | asyncio.Future[Outcome]] = collections.deque()
        source = batches.__aiter__()
        next_batch: asyncio.Future[list[tuple[int, Any]]] | None = None
        exhausted = False
        try:
            while pending or not exhausted:
                while pending and (isinstance(pending[0], Outcome) or pending[0].done()):
                    head = pending.popleft()
                    yield head if isinstance(head, Outcome) else head.result()
                if not exhausted and next_batch is None and self._inflight < window and not self._closed:
                    next_batch = asyncio.ensure_future(source.__anext__())
                waiting = [f for f in (next_batch, pending[0] if pending else None) if f is not None]
                if not waiting:
                    break  # closed mid-stream with nothing in flight
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[arg-type]
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
        if not exhausted:
            raise RuntimeError("engine was closed before the stream ended")

    def _schedule(self, index: int, event: Any) -> "Outcome | asyncio.Future[Outcome]":
        """Prepare now (input order matters for identity joins), deliver in the background.

        A drop is final at once: with no callback, or a plain one, it needs no task.
        """
        prepared = event if isinstance(event, Outcome) else self.pipeline.prepare(event, index)
        if not isinstance(prepared, Outcome):
            return asyncio.ensure_future(self._track(self._deliver(prepared)))
        if self.on_outcome is None:
            return prepared
        return asyncio.ensure_future(self._finish(prepared))

    async def replay_dead_letters(self) -> list[Outcome]:
        """Re-send every dead letter of this preset; keep only those that still do not succeed.

        A letter that cannot be replayed here (unknown action, or recorded for
        another origin than the settings name now) stays in the store, and its
        outcome says why.
        """
        await self.start()
        mine = [e for e in self.dead_letters.entries() if e.get("preset") == self.preset.name]
        refused: dict[int, Outcome] = {}
        runnable: list[tuple[int, dict[str, Any], Prepared]] = []
        for position, entry in enumerate(mine):
            prepared = self._prepared_from_letter(entry)
            if isinstance(prepared, str):
                refused[position] = Outcome(entry.get("index"), entry.get("messageId"), oc.FAILED,
                                            cause="not_replayable", detail=prepared)
            else:
                runnable.append((position, entry, prepared))
        delivered = await asyncio.gather(*(self._track(self._deliver(p, record=False)) for _, _, p in runnable))
        results = {**refused, **{position: result for (position, _, _), result in zip(runnable, delivered)}}
        # id -> the updated letter, or None once delivered
        settled: dict[Any, dict[str, Any] | None] = {}
        for (_, entry, _), result in zip(runnable, delivered):
            settled[entry.get("id")] = None if result.outcome == oc.DELIVERED else {
                **entry, "cause": result.cause, "detail": result.detail, "last_request": result.request,
                "last_response": result.response, "attempts": (entry.get("attempts") or 0) + (result.attempts or 0)}
        # Rewrite from a fresh read so letters added while the replay ran are kept;
        # there is no await between this read and the write.
        fresh = []
        for entry in self.dead_letters.entries():
            key = entry.get("id")
            if key not in settled:
                fresh.append(entry)
            elif settled[key] is not None:
                fresh.append(settled[key])
        self.dead_letters.replace(fresh)
        return [results[i] for i in sorted(results)]

    # -- internals ------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")

    def _track(self, work: Awaitable[Outcome]) -> "asyncio.Future[Outcome]":
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

    async def _deliver(self, prepared: Prepared, record: bool = True) -> Outcome:
        assert self._sender is not None and self._slots is not None
        try:
            async with self._slots:
                result = await self._sender.deliver(prepared)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing is lost: an unforeseen failure is still an outcome
            log.error("event %s: delivery failed unexpectedly: %s", prepared.index, type(exc).__name__)
            result = Outcome(prepared.index, prepared.message_id, oc.DEAD_LETTERED, cause="internal_error",
                             detail=f"delivery failed unexpectedly ({type(exc).__name__}); kept for replay",
                             request=self._sender.original_request(prepared))
        if record and result.outcome == oc.DEAD_LETTERED:
            try:
                self.dead_letters.append(entry_for(self.preset.name, prepared.action.name, result,
                                                   self._sender.original_request(prepared)))
            except (OSError, TypeError, ValueError) as exc:
                log.error("event %s: could not write the dead letter: %s", prepared.index, type(exc).__name__)
                result.detail = f"{result.detail}; NOT kept: the dead-letter store could not be written ({type(exc).__name__})"
        return await self._finish(result)

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

    def _prepared_from_letter(self, entry: Mapping[str, Any]) -> Prepared | str:
        """The request to re-send, or why this letter cannot be replayed here."""
        request = entry.get("request")
        action = self.preset.actions.get(str(entry.get("action")))
        if not isinstance(request, dict) or action is None:
            return f"dead letter {entry.get('id')} has no request or names an unknown action; left in the store"
        # The live credential goes only to the origin the settings name now.
        expected = _origin(action.request.url.render({"settings": self.settings.public()}))
        recorded = _origin(str(request.get("url")))
        if recorded != expected:
            return f"recorded for {recorded}, but the settings now send to {expected}; left in the store"
        auth = self.preset.auth
        headers = {k: v for k, v in (request.get("headers") or {}).items()
                   if not (auth and auth.placement == "header" and auth.header and k.lower() == auth.header.lower())}
        url = str(request.get("url"))
        if auth and auth.placement == "query" and auth.header:
            url = _without_query_param(url, auth.header)  # the masked key; the live one is applied on send
        if request.get("body") is not None:
            headers.setdefault("Content-Type", self.pipeline.request_headers(action.name).get("Content-Type", "application/json"))
        return Prepared(entry.get("index"), entry.get("messageId"), action, str(request.get("method")),
                        url, headers, request.get("body"), {})

    def _save_identity(self) -> None:
        if self._identity_path is None:
            return
        try:
            self._identity_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self._identity_path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.pipeline.memory.snapshot(), handle, default=str)
            os.replace(tmp, self._identity_path)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("could not save the identity memory: %s", type(exc).__name__)


async def _enumerate(events: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[tuple[int, Any]]:
    if hasattr(events, "__aiter__"):
        index = 0
        async for event in events:  # type: ignore[union-attr]
            yield index, event
            index += 1
    else:
        for index, event in enumerate(events):  # type: ignore[arg-type]
            yield index, event


def _without_query_param(url: str, name: str) -> str:
    from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote, safe="")))


async def _single_batches(items: AsyncIterable[tuple[int, Any]]) -> AsyncIterator[list[tuple[int, Any]]]:
    async for item in items:
        yield [item]


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()
    except ValueError:
        return ""
