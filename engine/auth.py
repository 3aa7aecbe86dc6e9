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
import json
import logging
import random
import time
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
from multidict import CIMultiDict

from .preset import AuthSpec, RetrySpec
from .rate_limit import seconds_until
from .redaction import Redactor
from .response_rules import Answer, first_match
from .retry_policy import backoff_delay
from .settings import Settings
from .token_store import StoredTokens, TokenStore

log = logging.getLogger("signal_engine.auth")

DEFAULT_TOKEN_LIFETIME = 3600.0
MIN_EXPIRY_MARGIN_SECONDS = 5.0
THROTTLE_WAIT_SECONDS = 60.0
# After minting gave up, events arriving within this window fail at once
# (and are dead-lettered for replay) instead of each retrying the endpoint.
FAILURE_COOLDOWN_SECONDS = 30.0


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
                 rng: random.Random | None = None) -> None:
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
            await self._mint(session)
            assert self._access is not None
            return self._access

    async def refresh(self, session: aiohttp.ClientSession, rejected: str) -> str:
        """After a 401: mint a new token unless another request already replaced ``rejected``."""
        async with self._lock:
            if self._access is not None and self._access != rejected and self._clock() < self._expires_at:
                return self._access
            self._access = None
            await self._mint(session)
            assert self._access is not None
            return self._access

    async def _mint(self, session: aiohttp.ClientSession) -> None:
        if self._broken is not None:
            raise self._broken
        if self._recent_failure is not None and self._clock() - self._recent_failure[1] < FAILURE_COOLDOWN_SECONDS:
            raise self._recent_failure[0]
        try:
            await self._mint_with_retries(session)
        except AuthFailure as exc:
            if not exc.fatal:
                self._recent_failure = (exc, self._clock())
            raise
        self._recent_failure = None

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
                f"token endpoint answered {status if status is not None else 'no response'}"
            if action == "reauthorise":
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
            async with session.post(self._token_url, data=form, headers={"Accept": "application/json"}) as resp:
                text = await resp.text()
                try:
                    body: Any = json.loads(text) if text else None
                except ValueError:
                    body = text[:500]
                return resp.status, body, CIMultiDict(resp.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("auth: token endpoint unreachable: %s", self.redactor.redact(str(exc) or type(exc).__name__))
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
