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
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from ..compile.compiler import load_preset
from ..delivery.auth import Auth
from ..delivery.batch import Batcher
from ..delivery.rate_limit import RateLimiter, bucket_shape
from ..delivery.sender import Sender
from ..delivery.transport import Transport
from ..language.model import Preset
from ..language.settings import Settings, resolve
from ..loggers import package_logger
from ..outcome import Outcome
from ..pipeline.identity import IdentityMemory
from ..pipeline.prepare import Pipeline
from ..redaction import Redactor
from ..state.backend import MemoryState, StateBackend, open_state
from ..state.buffered import BufferedDeadLetters, BufferedIdentityStore, BufferedJournal, BufferedTokenStore
from ..state.dead_letters import DeadLetterStore
from ..state.identity import IdentityLimits, IdentityStore
from ..state.journal import DeliveryJournal
from ..state.record import RecordLimits, preset_integration
from ..state.token_store import MemoryTokenStore, TokenStore
from .delivering import Delivering
from .lifecycle import CLOSE_RETRY_SECONDS, Lifecycle
from .processing import Processing
from .recording import recorder_for
from .replay import Replaying
from .stopping import Stop, Stopping

__all__ = ["CLOSE_RETRY_SECONDS", "Engine", "OutcomeCallback"]

OutcomeCallback = Callable[[Outcome], Any]  # may be async

log = package_logger(__name__)


class Engine(Lifecycle, Stopping, Processing, Delivering, Replaying):
    """One preset connection: its stores, its sender, bounded concurrency; the parts by concern beside this module."""

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
