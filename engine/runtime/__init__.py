"""The embedding API: one engine per preset connection, living in the host's event loop.

    async with Engine.from_preset("outreach/lead-capture", settings, state=".signal-state") as engine:
        outcome = await engine.process(event)

Filtering and transforming happen synchronously inside ``process`` (they are
pure and fast), in the order the host calls it, so identify-then-track
ordering is kept even when deliveries overlap. Delivery is concurrent and
bounded; ``close`` drains what is in flight before closing the session.
``stop`` ends a stream early (a signal, a closed output): nothing more is
sent, what is on the wire gets a grace period, and every event still gets its
one outcome, the unsent ones as dead letters.

State (``state=``): identity, the delivery journal, dead letters and tokens
come from one backend, the embedded SQLite file of a state directory by
default, in memory without one. Every store is wrapped so that a write the
disk refuses is kept in memory and retried (:mod:`engine.state.buffered`).
A ``state.db`` that is empty, not ours or of a newer version is refused;
``reset_state=True`` moves it aside and starts afresh (``--reset-state``).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import (
    Any,
)

import aiohttp

from .. import outcome as oc
from ..compile.compiler import load_preset
from ..delivery.auth import Auth, build_auth
from ..delivery.batch import Batcher
from ..delivery.rate_limit import RateLimiter, bucket_shape
from ..delivery.sender import Sender
from ..delivery.trail import TrailingTransport, start_trail
from ..delivery.transport import AiohttpTransport, Transport
from ..language.model import Preset
from ..language.settings import Settings, SettingsError, resolve
from ..outcome import Outcome
from ..pipeline.identity import IdentityMemory
from ..pipeline.prepare import Pipeline, Prepared
from ..redaction import Redactor
from ..state.backend import MemoryState, StateBackend, open_state
from ..state.buffered import (
    BufferedDeadLetters,
    BufferedIdentityStore,
    BufferedJournal,
    BufferedTokenStore,
    cancel_all,
    flush_all,
)
from ..state.dead_letters import DeadLetterStore, entry_for
from ..state.identity import IdentityLimits, IdentityStore
from ..state.journal import DeliveryJournal, event_key
from ..state.record import RecordLimits, preset_integration
from ..state.token_store import AUTHORISED_CHAIN, MemoryTokenStore, TokenStore
from .inputs import numbered, one_at_a_time
from .journalling import already_delivered
from .letters import letter_context
from .recording import recorder_for
from .replay import Replaying
from .stopping import Stop, stopped_outcome

OutcomeCallback = Callable[[Outcome], Any]  # may be async

log = logging.getLogger(__name__)

# How long ``close`` keeps retrying a rotated refresh token or dead letters the
# disk refused, before it gives up and says what is lost.
CLOSE_RETRY_SECONDS = 30.0


class Engine(Replaying):
    def __init__(
        self,
        preset: Preset,
        settings: Settings,
        *,
        state: str | Path | StateBackend | None = None,
        token_store: TokenStore | None = None,
        dead_letters: DeadLetterStore | None = None,
        identity: IdentityStore | None = None,
        journal: DeliveryJournal | None = None,
        on_outcome: OutcomeCallback | None = None,
        concurrency: int | None = None,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        reset_state: bool = False,
        record: bool | RecordLimits = True,
        integration: str | None = None,
        identity_scope: str | None = None,
    ) -> None:
        self.preset = preset
        # Every engine has an integration name (the preset's, unless given); dead letters are filed under it.
        # One given (a service's) also keys the journal and the rate budget, so two integrations of one preset
        # never share them, and names each outcome; a run's keep the preset's, as before.
        self.integration = integration or preset_integration(preset.name, preset.path)
        self._named = integration is not None
        self.name = integration or preset.name
        self.settings = settings
        self.state_dir = Path(state) if isinstance(state, (str, Path)) else None
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
        self._batcher: Batcher | None = None  # events of batched actions wait here for their request
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        # Journal keys of events being sent now: a duplicate waits for the first copy's outcome.
        self._sending: dict[str, asyncio.Future[None]] = {}
        # Deliveries under way, each with its count of requests sent (see stop()).
        self._active: dict[asyncio.Future[Outcome], list[int]] = {}
        self._stop: Stop | None = None
        self._stop_requested: asyncio.Future[None] | None = None

        if state is None:
            backend: StateBackend = MemoryState()
        elif isinstance(state, (str, Path)):
            backend = open_state(state, reset=reset_state)
            if getattr(backend, "moved_aside", None) is not None:
                log.warning(
                    "state: %s was refused and moved aside to %s; starting afresh",
                    Path(state) / "state.db",
                    backend.moved_aside,  # type: ignore[attr-defined]
                )
        else:
            backend = state
        self.state = backend
        self._own_state = isinstance(state, (str, Path))

        auth = preset.auth
        # Identity first: opening it imports the files of an earlier version (tokens included).
        self.identity = BufferedIdentityStore(
            identity
            if identity is not None
            else backend.identity(identity_scope or preset.name, IdentityLimits.of(preset.identity))
        )
        if token_store is None:
            token_store = (
                backend.tokens(str(settings[auth.client_id_setting or ""] or ""))
                if auth is not None and auth.is_oauth2
                else MemoryTokenStore()
            )
        self.token_store = BufferedTokenStore(token_store)
        self.dead_letters = BufferedDeadLetters(dead_letters if dead_letters is not None else backend.dead_letters())
        self.journal = BufferedJournal(
            journal if journal is not None else backend.journal(self.name, preset.delivery.dedupe_window_seconds)
        )

        self.pipeline = Pipeline(preset, settings, IdentityMemory.for_preset(preset.identity, self.identity))
        # The console's record of recent events, when the backend keeps one (state.db, Redis) and it is wanted.
        self.recorder = recorder_for(backend, record, self.integration, preset, self.redactor)
        self.auth: Auth | None = None  # built on start(), with the transport
        # A backend shared by several processes may also share the rate budget (one for all workers).
        # Each further window has its own shared budget beside the first one's.
        spec = preset.delivery.rate_limit
        shared_budget = getattr(backend, "rate_budget", None)
        budgets = [
            shared_budget(
                self.name if i == 0 else f"{self.name}#window{i}",
                *bucket_shape(window.requests, window.per_seconds),
                clock,
            )
            if shared_budget
            else None
            for i, window in enumerate((spec, *spec.windows))
        ]
        self.limiter = RateLimiter.from_spec(
            spec, clock=clock, sleep=sleep, budget=budgets[0], window_budgets=budgets[1:]
        )

    @classmethod
    def from_preset(cls, preset: str | Preset, settings: Mapping[str, Any] | Settings, **options: Any) -> Engine:
        """Build from a built-in preset name (or path) and a plain mapping of setting values."""
        compiled = load_preset(preset) if isinstance(preset, str) else preset
        resolved = settings if isinstance(settings, Settings) else resolve(compiled.settings, settings, require=True)
        return cls(compiled, resolved, **options)

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> Engine:
        if self._sender is None:
            self._check_refresh_token()
            if self._transport is None:
                if self._session is None:
                    timeout = aiohttp.ClientTimeout(total=self.preset.delivery.timeout_seconds)
                    self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
                self._transport = AiohttpTransport(
                    self._session, self.preset.delivery.timeout_seconds, self.preset.delivery.max_response_bytes
                )
            if self.recorder is not None:
                self._transport = TrailingTransport(self._transport, self.redactor)
            self._slots = asyncio.Semaphore(self.concurrency)
            self.auth = build_auth(
                self.preset.auth,
                self.settings,
                self.redactor,
                self._transport,
                self.preset.delivery.retries,
                store=self.token_store,
                clock=self._clock,
                sleep=self._sleep,
                rng=self._rng,
            )
            self._sender = Sender(
                self.preset.delivery,
                self.settings,
                self.auth,
                self.preset.auth,
                self.limiter,
                self.redactor,
                self._transport,
                sleep=self._sleep,
                rng=self._rng,
            )
            self._batcher = Batcher(
                self._sender, self.settings.public(), self._slots, self._sleep, self._sender.upserter.order_key
            )
        return self

    async def __aenter__(self) -> Engine:
        try:
            return await self.start()
        except BaseException:
            await self.close()  # nothing was sent; release the state and the session
            raise

    def _check_refresh_token(self) -> None:
        """Before anything is sent: a refresh-token connection needs a token, from the settings or the state.

        Without a ``refresh_token`` setting the engine continues the chain a
        person authorised into the state (``signal-engine auth``); when there
        is none, that is a configuration error, not a reason to dead-letter
        every event.
        """
        auth = self.preset.auth
        if auth is None or auth.type != "oauth2_refresh_token" or self.settings[auth.refresh_token_setting or ""]:
            return
        try:
            if self.token_store.load(AUTHORISED_CHAIN) is not None:
                return
        except OSError:
            return  # unreadable now: minting says what is wrong, event by event
        name = auth.refresh_token_setting
        client_id = self.settings[auth.client_id_setting or ""]
        where = f"the state directory {self.state_dir}" if self.state_dir is not None else "the engine's state"
        how = (
            f"authorise the app once with `signal-engine auth {self.preset.name} --settings FILE"
            f"{f' --state {self.state_dir}' if self.state_dir is not None else ''}`, or set {name}"
            if auth.authorize_url is not None
            else f"set {name}"
        )
        raise SettingsError(
            f"required setting {name!r} is missing, and {where} holds no authorisation for "
            f"client_id {client_id!r}: {how}"
        )

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop taking events, wait for in-flight deliveries, write what the disk refused, close the session.

        Identity, journal entries and dead letters are written as they
        happen, so nothing waits for this; a process killed without it loses
        only what was on the wire.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._batcher is not None:
                await self._batcher.flush_all()  # what waits to fill a request goes now
            await self._idle.wait()
            await self._settle_auth()
            await self._write_what_was_kept()
        finally:
            if self._batcher is not None:
                self._batcher.cancel_all()
            cancel_all(self._stores())
            if self.recorder is not None:
                self.recorder.close()
            try:
                if self._session is not None and self._own_session:
                    await self._session.close()
            finally:
                if self._own_state:
                    self.state.close()

    # -- stopping early ---------------------------------------------------------
    def stop(self, grace: float = 30.0, reason: str = "the engine was stopped") -> None:
        """End early: send nothing more; give what is on the wire ``grace`` seconds; record everything.

        Every event still gets its one outcome. One whose first request had
        not left ends at once as ``dead_lettered`` with cause ``not_sent``;
        one on the wire (or retrying) may finish within ``grace`` seconds,
        after which it is cut off and dead-lettered as ``interrupted`` (the
        destination may have it). :meth:`process_batches` stops asking its
        source for more and ends once the events it took have their outcomes.
        ``reason`` (e.g. "SIGTERM") goes into those outcomes' details.
        Calling ``stop`` again shortens the grace period (``stop(0)``: now).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, grace)
        if self._stop is None:
            self._stop = Stop(reason, max(0.0, grace), deadline)
            if self._stop_requested is not None and not self._stop_requested.done():
                self._stop_requested.set_result(None)
        elif deadline >= self._stop.deadline:
            return
        self._stop.deadline = deadline
        if self._stop.timer is not None:
            self._stop.timer.cancel()
        self._stop.timer = loop.call_at(deadline, self._cut_off)
        for work, sent in list(self._active.items()):
            if not sent[0]:
                work.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    def in_flight(self) -> int:
        """Deliveries with a request on the wire (or between retries) now."""
        return sum(1 for sent in self._active.values() if sent[0])

    def _cut_off(self) -> None:
        """The grace period is over: whatever is still under way ends now, as a dead letter."""
        for work in list(self._active):
            work.cancel()

    async def _settle_auth(self) -> None:
        """A token request on the wire is awaited (its rotated refresh token must be saved); no new one starts."""
        settle = getattr(self.auth, "settle", None)
        if settle is not None:
            await settle()

    def _stores(self) -> list[Any]:
        return [self.token_store, self.dead_letters, self.journal, self.identity]

    async def _write_what_was_kept(self) -> None:
        """Retry writes the disk refused; wait a while for a token or dead letters, then say what is lost."""
        if not flush_all(self._stores()):
            return
        precious = [self.token_store, self.dead_letters]
        waited = 0.0
        if flush_all(precious):
            log.error(
                "state: waiting up to %ds for the state directory to accept a rotated refresh token or dead "
                "letters (free some space)",
                int(CLOSE_RETRY_SECONDS),
            )
        while flush_all(precious) and waited < CLOSE_RETRY_SECONDS:
            await self._sleep(1.0)
            waited += 1.0
        if len(self.token_store.pending):
            log.error("state: the rotated refresh token could NOT be saved; the connection must be re-authorised")
        if len(self.dead_letters.pending):
            log.error(
                "state: %d dead letter(s) could NOT be saved; their outcomes above hold the requests",
                len(self.dead_letters.pending),
            )
        others = len(self.journal.pending) + len(self.identity.pending)
        if others:
            log.error(
                "state: %d identity or journal write(s) could not be saved; a rerun may send those events again "
                "(the upsert merges them) or miss an identify join",
                others,
            )

    @property
    def mints(self) -> int:
        return self.auth.mints if self.auth else 0

    # -- processing ---------------------------------------------------------
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
                while pending and (isinstance(pending[0], Outcome) or pending[0].done()):
                    head = pending.popleft()
                    result = head if isinstance(head, Outcome) else head.result()
                    if self._named:
                        result.integration = self.integration
                    yield result
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
            work = self._track(self._deliver_once(prepared, event_key(event)))
            if self.recorder is not None:
                work.add_done_callback(
                    lambda done: (
                        done.cancelled()
                        or done.exception() is not None
                        or self._noted(event, done.result(), started, prepared.traits)
                    )
                )
            return work
        self._noted(event, prepared, started)
        if self.on_outcome is None:
            return prepared
        return asyncio.ensure_future(self._finish(prepared))

    # -- internals ------------------------------------------------------------
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
                cause="internal_error",
                detail=f"delivery failed unexpectedly ({type(exc).__name__}); kept for replay",
                request=self._sender.original_request(prepared),
            )
        if result.outcome == oc.DELIVERED and key is not None:
            # Before the outcome is handed out: an outcome seen as delivered is always in the journal.
            try:
                self.journal.record(key)
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
            if self.recorder is None:
                return await self._sender.deliver(prepared, sent)
            trail = start_trail()  # this task's requests, for the record (engine.delivery.trail)
            result = await self._sender.deliver(prepared, sent)
            result.exchanges = list(trail)
            return result

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
