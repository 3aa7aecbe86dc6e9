"""OAuth2 refresh-token authentication, as a preset's ``auth:`` section declares it.

What makes this more than a POST to a token URL:

* access tokens are cached for their life (minting is throttled upstream);
* one refresh at a time (two parallel refreshes with the same rotating
  token would lose the connection);
* the rotated refresh token is persisted *before* the new access token is
  used;
* a refused refresh token (``invalid_grant``) stops all further attempts
  with a message a person can act on, instead of hammering the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from multidict import CIMultiDict

from ..language.model import AuthSpec, RetrySpec
from ..language.settings import Settings
from ..redaction import Redactor
from ..state.token_store import StoredTokens, TokenStore
from .rate_limit import seconds_until
from .response_rules import Answer, first_match
from .retry_policy import backoff_delay

log = logging.getLogger("signal_engine.auth")

DEFAULT_TOKEN_LIFETIME = 3600.0
MIN_EXPIRY_MARGIN_SECONDS = 5.0
THROTTLE_WAIT_SECONDS = 60.0
# After minting gave up, events arriving within this window fail at once
# (and are dead-lettered for replay) instead of each retrying the endpoint.
FAILURE_COOLDOWN_SECONDS = 30.0
STORE_LOCK_WAIT_SECONDS = 120.0


class AuthFailure(Exception):
    """No access token could be had. ``fatal`` means a person must act (re-authorise)."""

    def __init__(self, message: str, *, fatal: bool, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.status = status
        self.body = body


class RefreshTokenAuth:
    """Holds one connection's tokens. Secrets never leave except in the auth header."""

    def __init__(self, spec: AuthSpec, settings: Settings, store: TokenStore, redactor: Redactor, retries: RetrySpec,
                 *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None, timeout_seconds: float = 30.0) -> None:
        self.spec = spec
        self.redactor = redactor
        self.retries = retries
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client_id = str(settings[spec.client_id_setting] or "")
        self._client_secret = str(settings[spec.client_secret_setting] or "")
        self._configured = str(settings[spec.refresh_token_setting] or "")
        stored = store.load(self._configured)
        self._refresh = stored.refresh_token if stored else self._configured
        self._token_url = spec.token_url.render({"settings": settings.public()})
        self._access: str | None = None
        self._expires_at = 0.0
        if stored and stored.access_token and stored.access_expires_at:
            lifetime_left = stored.access_expires_at - time.time()
            left = lifetime_left - self._margin(lifetime_left)
            if left > 0:
                self._access, self._expires_at = stored.access_token, clock() + left
        for secret in (self._client_secret, self._configured, self._refresh, self._access):
            redactor.add(secret)
        self._lock = asyncio.Lock()
        self._broken: AuthFailure | None = None
        self._recent_failure: tuple[AuthFailure, float] | None = None
        self._mint_task: asyncio.Future[None] | None = None
        self._rejected: str | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.mints = 0

    def _margin(self, lifetime: float) -> float:
        """Refresh this long before expiry: the preset's margin, but never more than half a short lifetime."""
        return max(MIN_EXPIRY_MARGIN_SECONDS, min(self.spec.refresh_before_expiry, lifetime / 2))

    def header_value(self, token: str) -> str:
        return self.spec.value.replace("{access_token}", token)

    async def token(self, session: aiohttp.ClientSession) -> str:
        """A valid access token, minting one only when the cached one is (nearly) expired."""
        if self._access is not None and self._clock() < self._expires_at:
            return self._access
        async with self._lock:
            if self._access is not None and self._clock() < self._expires_at:
                return self._access
            await self._minted(session)
            assert self._access is not None
            return self._access

    async def refresh(self, session: aiohttp.ClientSession, rejected: str) -> str:
        """After a 401: mint a new token unless another request already replaced ``rejected``."""
        async with self._lock:
            if self._access is not None and self._access != rejected and self._clock() < self._expires_at:
                return self._access
            self._access = None
            self._rejected = rejected
            await self._minted(session)
            assert self._access is not None
            return self._access

    async def _minted(self, session: aiohttp.ClientSession) -> None:
        """Mint in a task of its own, shielded from the caller.

        A host that cancels ``process`` (a timeout) while the token endpoint is
        answering must not drop the rotated refresh token on the floor: the
        old one is already dead upstream. The task finishes, saves it, and the
        next caller picks up its result.
        """
        if self._mint_task is None or self._mint_task.done():
            self._mint_task = asyncio.ensure_future(self._mint(session))
            self._mint_task.add_done_callback(_retrieve)
        await asyncio.shield(self._mint_task)

    async def _mint(self, session: aiohttp.ClientSession) -> None:
        if self._broken is not None:
            raise self._broken
        if self._recent_failure is not None and self._clock() - self._recent_failure[1] < FAILURE_COOLDOWN_SECONDS:
            raise self._recent_failure[0]
        async with self._store_lock():
            # Another engine on the same state may have rotated the token meanwhile.
            if self._adopt_stored():
                return
            try:
                self._check_store_writable()
                await self._mint_with_retries(session)
            except AuthFailure as exc:
                if not exc.fatal:
                    self._recent_failure = (exc, self._clock())
                raise
        self._recent_failure = None

    @contextlib.asynccontextmanager
    async def _store_lock(self) -> AsyncIterator[None]:
        """Serialise refreshes across processes sharing a token store (when it can lock)."""
        try_lock = getattr(self._store, "try_lock", None)
        if try_lock is None:
            yield
            return
        waited = 0.0
        locked = try_lock()
        while not locked and waited < STORE_LOCK_WAIT_SECONDS:
            await asyncio.sleep(0.05)
            waited += 0.05
            locked = try_lock()
        if not locked:
            log.warning("auth: the token store stayed locked for %ds; refreshing without the lock", int(waited))
        try:
            yield
        finally:
            if locked:
                self._store.unlock()  # type: ignore[attr-defined]

    def _check_store_writable(self) -> None:
        """A refresh spends the current refresh token: first make sure the rotated one can be saved."""
        check = getattr(self._store, "check_writable", None)
        if check is not None and not check():
            failure = AuthFailure("the state cannot be written now (disk full?), so the refresh token was not used: "
                                  "a rotated token that cannot be saved would be lost; free space and retry",
                                  fatal=False)
            log.error("auth: %s", failure)
            raise failure

    def _adopt_stored(self) -> bool:
        """Take a newer refresh token (and a live access token) written by another engine.

        True when a usable access token was adopted, so no mint is needed.
        """
        try:
            stored = self._store.load(self._configured)
        except OSError:
            return False
        if stored is None:
            return False
        if stored.refresh_token != self._refresh:
            self.redactor.add(stored.refresh_token)
            self._refresh = stored.refresh_token
        if stored.access_token and stored.access_expires_at and stored.access_token not in (self._rejected, self._access):
            lifetime_left = stored.access_expires_at - time.time()
            left = lifetime_left - self._margin(lifetime_left)
            if left > 0:
                self.redactor.add(stored.access_token)
                self._access, self._expires_at = stored.access_token, self._clock() + left
                return True
        return False

    async def _mint_with_retries(self, session: aiohttp.ClientSession) -> None:
        attempt = 0
        while True:
            attempt += 1
            status, body, headers = await self._post(session)
            if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
                self._accept(body)
                return
            answer = Answer.from_body(status, body) if status is not None else Answer(None, transport_error="connection")
            rule = first_match(self.spec.rules, answer)
            action = rule.then if rule else ("retry" if status is None or status >= 500 else "reauthorise")
            message = (rule.message if rule and rule.message else None) or \
                (f"the token endpoint answered {status}" if status is not None else "the token endpoint could not be reached")
            if action == "reauthorise":
                used = self._refresh
                self._adopt_stored()
                if self._refresh != used and attempt < self.retries.max_attempts:
                    continue  # another engine had rotated it; try the newer token once more
                self._broken = AuthFailure(self.redactor.redact(message), fatal=True, status=status,
                                           body=self.redactor.redact(body))
                log.error("auth: %s", self._broken)
                raise self._broken
            if attempt >= self.retries.max_attempts:
                raise AuthFailure(self.redactor.redact(f"{message} (gave up after {attempt} attempts)"), fatal=False,
                                  status=status, body=self.redactor.redact(body))
            if action == "wait_rate_limit":
                delay = seconds_until(headers.get("Retry-After")) if headers else None
                delay = THROTTLE_WAIT_SECONDS if delay is None else delay
            else:
                delay = backoff_delay(self.retries, attempt, self._rng)
            log.warning("auth: %s; minting again in %.1fs", self.redactor.redact(message), delay)
            await self._sleep(delay)

    async def _post(self, session: aiohttp.ClientSession) -> tuple[int | None, Any, Mapping[str, str]]:
        form = {"grant_type": "refresh_token", "client_id": self._client_id,
                "client_secret": self._client_secret, "refresh_token": self._refresh}
        try:
            # Never follow a redirect: it would re-post the client secret elsewhere.
            async with session.post(self._token_url, data=form, headers={"Accept": "application/json"},
                                    allow_redirects=False, timeout=self._timeout) as resp:
                text = await resp.text(errors="replace")
                try:
                    body: Any = json.loads(text) if text else None
                except ValueError:
                    body = text[:500]
                return resp.status, body, CIMultiDict(resp.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            # Exception text can quote the request; only its type is safe to log.
            log.info("auth: token endpoint unreachable: %s", type(exc).__name__)
            return None, None, CIMultiDict()

    def _accept(self, body: dict[str, Any]) -> None:
        access = body["access_token"]
        rotated = body.get("refresh_token")
        self.redactor.add(access)
        if isinstance(rotated, str) and rotated:
            self.redactor.add(rotated)
            self._refresh = rotated
        lifetime = body.get("expires_in")
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else DEFAULT_TOKEN_LIFETIME
        # The old refresh token is already dead upstream: persist the new one
        # before anything uses the access token minted with it.
        try:
            self._store.save(StoredTokens(self._refresh, access, time.time() + lifetime), self._configured)
        except OSError as exc:
            log.error("auth: could not persist the rotated refresh token (%s); it is kept in memory "
                      "only and will be lost when this process exits", type(exc).__name__)
        self._access = access
        self._expires_at = self._clock() + lifetime - self._margin(lifetime)
        self.mints += 1
        log.info("auth: minted an access token valid for %ds", int(lifetime))


def _retrieve(task: "asyncio.Future[None]") -> None:
    """Mark a mint task's failure as seen even when every waiter was cancelled."""
    if not task.cancelled():
        task.exception()
