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
import json
import os
import random
import time
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping

import aiohttp

from . import outcome as oc
from .auth import RefreshTokenAuth
from .dead_letters import DeadLetterStore, FileDeadLetters, MemoryDeadLetters, entry_for
from .identity import IdentityMemory
from .outcome import Outcome
from .pipeline import Pipeline, Prepared
from .preset import Preset, load_preset
from .rate_limit import RateLimiter
from .redaction import Redactor
from .sender import Sender
from .settings import Settings, resolve
from .token_store import FileTokenStore, MemoryTokenStore, TokenStore, fingerprint

OutcomeCallback = Callable[[Outcome], Any]


class Engine:
    def __init__(self, preset: Preset, settings: Settings, *, state: str | Path | None = None,
                 token_store: TokenStore | None = None, dead_letters: DeadLetterStore | None = None,
                 on_outcome: OutcomeCallback | None = None, concurrency: int | None = None,
                 session: aiohttp.ClientSession | None = None,
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
        self._own_session = session is None
        self._session = session
        self._sender: Sender | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

        auth = preset.auth
        if token_store is None:
            if self.state_dir is not None and auth is not None:
                client = fingerprint(str(settings[auth.client_id_setting] or ""))
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
        self.auth = (RefreshTokenAuth(auth, settings, token_store, self.redactor, preset.delivery.retries,
                                      clock=clock, sleep=sleep, rng=self._rng) if auth is not None else None)
        rl = preset.delivery.rate_limit
        self.limiter = RateLimiter(rl.requests, rl.per_seconds, remaining_header=rl.remaining_header,
                                   reset_header=rl.reset_header, clock=clock, sleep=sleep)

    @classmethod
    def from_preset(cls, preset: str | Preset, settings: Mapping[str, Any] | Settings, **options: Any) -> "Engine":
        """Build from a built-in preset name (or path) and a plain mapping of setting values."""
        compiled = load_preset(preset) if isinstance(preset, str) else preset
        resolved = settings if isinstance(settings, Settings) else resolve(compiled.settings, settings, require=True)
        return cls(compiled, resolved, **options)

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> "Engine":
        if self._sender is None:
            if self._session is None:
                timeout = aiohttp.ClientTimeout(total=self.preset.delivery.timeout_seconds)
                self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
            self._slots = asyncio.Semaphore(self.concurrency)
            self._sender = Sender(self.preset.delivery, self.settings, self.auth, self.limiter, self.redactor,
                                  self._session, auth_header=self.preset.auth.header if self.preset.auth else None,
                                  sleep=self._sleep, rng=self._rng)
        return self

    async def __aenter__(self) -> "Engine":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Wait for in-flight deliveries, persist identity memory, close the session."""
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        self._save_identity()
        if self._session is not None and self._own_session:
            await self._session.close()

    @property
    def mints(self) -> int:
        return self.auth.mints if self.auth else 0

    # -- processing ---------------------------------------------------------
    async def process(self, event: Any, index: int | None = None) -> Outcome:
        """Filter, transform and deliver one event; always returns its one outcome."""
        if self._closed:
            raise RuntimeError("engine is closed")
        await self.start()
        prepared = self.pipeline.prepare(event, index)
        if isinstance(prepared, Outcome):
            return self._finish(prepared)
        return await self._deliver(prepared)

    async def process_many(self, events: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Outcome]:
        """Process a stream with bounded concurrency; outcomes come back in input order."""
        async for outcome in self.process_indexed(_enumerate(events)):
            yield outcome

    async def process_indexed(self, items: AsyncIterable[tuple[int, Any]]) -> AsyncIterator[Outcome]:
        """Like :meth:`process_many` for ``(index, event)`` pairs; an :class:`Outcome` item passes through."""
        await self.start()
        pending: collections.deque[asyncio.Future[Outcome]] = collections.deque()
        async for index, event in items:
            if isinstance(event, Outcome):
                prepared: Prepared | Outcome = event
            else:
                prepared = self.pipeline.prepare(event, index)  # in order: identity joins depend on it
            if isinstance(prepared, Outcome):
                done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
                done.set_result(self._finish(prepared))
                pending.append(done)
            else:
                pending.append(asyncio.ensure_future(self._deliver(prepared)))
            while len(pending) > self.concurrency * 4 or (pending and pending[0].done()):
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()

    async def replay_dead_letters(self) -> list[Outcome]:
        """Re-send every dead letter of this preset; keep only those that still do not succeed."""
        await self.start()
        mine = [e for e in self.dead_letters.entries() if e.get("preset") == self.preset.name]
        jobs = [(entry, self._prepared_from_letter(entry)) for entry in mine]
        runnable = [(entry, prepared) for entry, prepared in jobs if prepared is not None]
        results = await asyncio.gather(*(self._deliver(prepared, record=False) for _, prepared in runnable))
        # id -> the updated letter, or None once delivered
        settled: dict[Any, dict[str, Any] | None] = {}
        for (entry, _), result in zip(runnable, results):
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
        return list(results)

    # -- internals ------------------------------------------------------------
    async def _deliver(self, prepared: Prepared, record: bool = True) -> Outcome:
        assert self._sender is not None and self._slots is not None
        self._inflight += 1
        self._idle.clear()
        try:
            async with self._slots:
                result = await self._sender.deliver(prepared)
            if record and result.outcome == oc.DEAD_LETTERED:
                self.dead_letters.append(entry_for(self.preset.name, prepared.action.name, result,
                                                   self._sender.original_request(prepared)))
            return self._finish(result)
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def _finish(self, result: Outcome) -> Outcome:
        if self.on_outcome is not None:
            self.on_outcome(result)
        return result

    def _prepared_from_letter(self, entry: Mapping[str, Any]) -> Prepared | None:
        request = entry.get("request")
        action = self.preset.actions.get(str(entry.get("action")))
        if not isinstance(request, dict) or action is None:
            return None
        headers = {k: v for k, v in (request.get("headers") or {}).items()
                   if not (self.preset.auth and k.lower() == self.preset.auth.header.lower())}
        if request.get("body") is not None:
            headers.setdefault("Content-Type", action.request.headers.get("Content-Type", "application/json"))
        return Prepared(entry.get("index"), entry.get("messageId"), action, str(request.get("method")),
                        str(request.get("url")), headers, request.get("body"), {})

    def _save_identity(self) -> None:
        if self._identity_path is None:
            return
        try:
            self._identity_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self._identity_path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.pipeline.memory.snapshot(), handle)
            os.replace(tmp, self._identity_path)
        except OSError:
            pass


async def _enumerate(events: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[tuple[int, Any]]:
    if hasattr(events, "__aiter__"):
        index = 0
        async for event in events:  # type: ignore[union-attr]
            yield index, event
            index += 1
    else:
        for index, event in enumerate(events):  # type: ignore[arg-type]
            yield index, event
