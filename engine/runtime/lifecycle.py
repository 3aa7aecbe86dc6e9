"""The engine's lifecycle: started on first use, closed once, draining what is in flight and writing what was kept.

Part of :class:`engine.runtime.Engine`. ``start`` builds the transport, the
auth and the sender; ``close`` waits for in-flight deliveries, lets a token
request on the wire finish (its rotated refresh token must be saved), retries
the writes the disk refused, and closes the session and the state.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import aiohttp

from ..delivery.auth import Auth, build_auth
from ..delivery.batch import Batcher
from ..delivery.sender import Sender
from ..delivery.trail import TrailingTransport
from ..delivery.transport import AiohttpTransport, Transport
from ..language.settings import SettingsError
from ..loggers import package_logger
from ..state.buffered import cancel_all, flush_all
from ..state.token_store import AUTHORISED_CHAIN

if TYPE_CHECKING:
    from ..delivery.rate_limit import RateLimiter
    from ..language.model import Preset
    from ..language.settings import Settings
    from ..redaction import Redactor
    from ..state.backend import StateBackend
    from ..state.buffered import BufferedDeadLetters, BufferedIdentityStore, BufferedJournal, BufferedTokenStore
    from ..state.record import Recorder

# The Engine's parts log as the Engine: one logger, ``engine.runtime``.
log = package_logger(__package__)

# How long ``close`` keeps retrying a rotated refresh token or dead letters the
# disk refused, before it gives up and says what is lost.
CLOSE_RETRY_SECONDS = 30.0


class Lifecycle:
    """The Engine's start and close; the engine provides what is declared below."""

    if TYPE_CHECKING:
        preset: Preset
        settings: Settings
        redactor: Redactor
        recorder: Recorder | None
        state: StateBackend
        state_dir: Path | None
        concurrency: int
        token_store: BufferedTokenStore
        dead_letters: BufferedDeadLetters
        journal: BufferedJournal
        identity: BufferedIdentityStore
        auth: Auth | None
        limiter: RateLimiter
        _sender: Sender | None
        _batcher: Batcher | None
        _session: aiohttp.ClientSession | None
        _own_session: bool
        _own_state: bool
        _transport: Transport | None
        _slots: asyncio.Semaphore | None
        _idle: asyncio.Event
        _closed: bool
        _clock: Callable[[], float]
        _sleep: Callable[[float], Awaitable[None]]
        _rng: random.Random

    async def start(self) -> Self:
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

    async def __aenter__(self) -> Self:
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
