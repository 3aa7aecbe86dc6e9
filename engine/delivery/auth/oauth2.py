"""OAuth 2 access tokens, minted from a refresh token or from client credentials.

What makes this more than a POST to a token URL:

* access tokens are cached for their life (minting is throttled upstream);
* one refresh at a time (two parallel refreshes with the same rotating
  token would lose the connection);
* the rotated refresh token is persisted *before* the new access token is
  used;
* a refused refresh token (``invalid_grant``) stops all further attempts
  with a message a person can act on, instead of hammering the endpoint;
* anything else that goes wrong at the token endpoint (garbage, a 5xx, a
  throttle) is retried with backoff, because the token is probably fine.

The preset declares how the client authenticates to the token endpoint
(form fields or HTTP Basic) and whether refresh tokens rotate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from ... import outcome as oc
from ...language.model import AuthSpec, RetrySpec
from ...language.settings import Settings
from ...loggers import package_logger
from ...redaction import Redactor
from ...state.token_store import AUTHORISED_CHAIN, StoredTokens, TokenStore
from ..rate_limit import seconds_until
from ..response_rules import Answer, first_match
from ..retry_policy import backoff_delay
from ..transport import HttpRequest, Transport, TransportError
from .base import AuthFailure

log = package_logger(__name__)

DEFAULT_TOKEN_LIFETIME = 3600.0
MIN_EXPIRY_MARGIN_SECONDS = 5.0
# A throttled or failing token endpoint is waited out this many times at most
# (exponential backoff up to the preset's ceiling) before events are dead-lettered.
MAX_THROTTLE_WAITS = 10
# After minting gave up, events arriving within this window fail at once
# (and are dead-lettered for replay) instead of each retrying the endpoint.
FAILURE_COOLDOWN_SECONDS = 30.0
STORE_LOCK_WAIT_SECONDS = 120.0


class OAuth2Auth:
    """Holds one connection's tokens. Secrets never leave except in the auth header.

    ``auth.type`` picks the grant: ``oauth2_refresh_token`` exchanges a
    refresh token minted once by a person (and persists each rotated one);
    ``oauth2_client_credentials`` exchanges the client's own credentials,
    so there is nothing to persist but the access token.
    """

    def __init__(
        self,
        spec: AuthSpec,
        settings: Settings,
        store: TokenStore,
        redactor: Redactor,
        retries: RetrySpec,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.redactor = redactor
        self.retries = retries
        self.transport = transport
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._grant = "refresh_token" if spec.type == "oauth2_refresh_token" else "client_credentials"
        self._client_id = str(settings[spec.client_id_setting or ""] or "")
        self._client_secret = str(settings[spec.client_secret_setting or ""] or "")
        # The chain of rotated refresh tokens starts at the configured one, or,
        # when the settings name none, at the authorisation a person stored in
        # the state (signal-engine auth). A client-credentials connection has
        # no chain, only a cached access token.
        given = str(settings[spec.refresh_token_setting or ""] or "") if self._grant == "refresh_token" else ""
        self._configured = (
            (given or AUTHORISED_CHAIN) if self._grant == "refresh_token" else "client:" + self._client_id
        )
        stored = store.load(self._configured)
        # Empty when neither the settings nor the state hold a refresh token: minting then
        # fails with a message a person can act on, without asking the endpoint.
        self._refresh = (
            stored.refresh_token if stored else (given if self._grant == "refresh_token" else self._configured)
        )
        self._token_url = spec.token_url.render({"settings": settings.public()}) if spec.token_url else ""
        self._access: str | None = None
        self._expires_at = 0.0
        self._values: dict[str, str] = {}  # auth.token_values, from the answer that gave the access token
        if stored and stored.access_token and stored.access_expires_at and self._has_values(stored.values):
            lifetime_left = stored.access_expires_at - time.time()
            left = lifetime_left - self._margin(lifetime_left)
            if left > 0:
                self._access, self._expires_at = stored.access_token, clock() + left
                self._values = dict(stored.values)
        for secret in (self._client_secret, self._refresh if self._grant == "refresh_token" else None, self._access):
            redactor.add(secret)
        if given:
            redactor.add(given)
        self._lock = asyncio.Lock()
        self._broken: AuthFailure | None = None
        self._recent_failure: tuple[AuthFailure, float] | None = None
        self._mint_task: asyncio.Future[None] | None = None
        self._rejected: str | None = None
        self._posting = False  # a token request is on the wire
        self._settling = False
        self.mints = 0

    def token_values(self) -> dict[str, str]:
        """The token answer's declared values (``{token.NAME}``), as of the current access token."""
        return dict(self._values)

    def _has_values(self, values: Mapping[str, Any]) -> bool:
        return answer_values(self.spec, values) is not None

    def _margin(self, lifetime: float) -> float:
        """Refresh this long before expiry: the preset's margin, but never more than half a short lifetime."""
        return max(MIN_EXPIRY_MARGIN_SECONDS, min(self.spec.refresh_before_expiry, lifetime / 2))

    async def credential(self) -> str:
        """A valid access token, minting one only when the cached one is (nearly) expired."""
        if self._access is not None and self._clock() < self._expires_at:
            return self._access
        async with self._lock:
            if self._access is not None and self._clock() < self._expires_at:
                return self._access
            await self._minted()
            assert self._access is not None
            return self._access

    async def refresh(self, rejected: str) -> bool:
        """After a 401: mint a new token unless another request already replaced ``rejected``."""
        async with self._lock:
            if self._access is not None and self._access != rejected and self._clock() < self._expires_at:
                return True
            self._access = None
            self._rejected = rejected
            await self._minted()
            return True

    async def _minted(self) -> None:
        """Mint in a task of its own, shielded from the caller.

        A host that cancels ``process`` (a timeout) while the token endpoint is
        answering must not drop the rotated refresh token on the floor: the
        old one is already dead upstream. The task finishes, saves it, and the
        next caller picks up its result.
        """
        if self._mint_task is None or self._mint_task.done():
            self._mint_task = asyncio.ensure_future(self._mint())
            self._mint_task.add_done_callback(_retrieve)
        await asyncio.shield(self._mint_task)

    async def settle(self) -> None:
        """Wind down before the process ends: never abandon a token request on the wire.

        Its answer may carry the rotated refresh token, the only one still
        valid upstream, so it is awaited and saved. A mint that is only
        waiting to try again is dropped, and no new token request starts.
        """
        self._settling = True
        task = self._mint_task
        if task is None or task.done():
            return
        if not self._posting:
            task.cancel()
        await asyncio.wait([task])

    async def _mint(self) -> None:
        if self._broken is not None:
            raise self._broken.again()
        if self._recent_failure is not None and self._clock() - self._recent_failure[1] < FAILURE_COOLDOWN_SECONDS:
            raise self._recent_failure[0].again()
        async with self._store_lock():
            # Another engine on the same state may have rotated the token meanwhile.
            if self._adopt_stored():
                return
            if self._grant == "refresh_token" and not self._refresh:
                raise AuthFailure(
                    f"there is no refresh token: the {self.spec.refresh_token_setting} setting is empty "
                    "and the state holds no authorisation for this client_id; authorise the app "
                    "(signal-engine auth) or set the refresh token",
                    fatal=True,
                )
            try:
                if self._grant == "refresh_token":
                    self._check_store_writable()
                await self._mint_with_retries()
            except AuthFailure as exc:
                if not exc.fatal:
                    self._recent_failure = (exc, self._clock())
                raise
        self._recent_failure = None

    def _store_lock(self) -> Any:
        """Serialise refreshes across processes sharing a token store (when it can lock)."""
        return store_lock(self._store, "refreshing without the lock")

    def _check_store_writable(self) -> None:
        """A refresh spends the current refresh token: first make sure the rotated one can be saved."""
        check = getattr(self._store, "check_writable", None)
        if check is not None and not check():
            failure = AuthFailure(
                "the state cannot be written now (disk full?), so the refresh token was not used: "
                "a rotated token that cannot be saved would be lost; free space and retry",
                fatal=False,
            )
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
        if (
            stored.access_token
            and stored.access_expires_at
            and stored.access_token not in (self._rejected, self._access)
            and self._has_values(stored.values)
        ):
            lifetime_left = stored.access_expires_at - time.time()
            left = lifetime_left - self._margin(lifetime_left)
            if left > 0:
                self.redactor.add(stored.access_token)
                self._access, self._expires_at = stored.access_token, self._clock() + left
                self._values = dict(stored.values)
                return True
        return False

    async def _mint_with_retries(self) -> None:
        """Mint until it works, a person must act, or the attempts run out.

        Only an explicit answer (``invalid_grant``, or a preset rule saying
        ``reauthorise``) stops minting for good: a garbage or empty answer, a
        5xx or a dropped connection says nothing about the token, so it is
        retried with backoff like any other transient failure. A throttled
        endpoint (429) is waited out, by ``Retry-After`` when it says, else
        with exponential backoff from about a second up to the preset's ceiling.
        """
        failures = throttled = 0
        while True:
            if self._settling:
                raise AuthFailure("the engine is shutting down: no new token request", fatal=False)
            status, body, headers = await self._post()
            if (
                status is not None
                and 200 <= status < 300
                and isinstance(body, dict)
                and isinstance(body.get("access_token"), str)
                and body["access_token"]
                and self._has_values(body)
            ):
                self._accept(body)
                return
            answer = (
                Answer.from_body(status, body, headers)
                if status is not None
                else Answer(None, transport_error=oc.CONNECTION)
            )
            rule = first_match(self.spec.rules, answer)
            action = rule.then if rule else self._default_action(status, body)
            message = (rule.message if rule and rule.message else None) or _what_went_wrong(status, body)
            clause = message.rstrip(". ")  # the preset's sentence, to which the engine adds what it did
            if action == "reauthorise":
                used = self._refresh
                self._adopt_stored()
                if self._refresh != used and failures < self.retries.max_attempts:
                    failures += 1
                    continue  # another engine had rotated it; try the newer token once more
                self._broken = AuthFailure(
                    self.redactor.redact(message), fatal=True, status=status, body=self.redactor.redact(body)
                )
                log.error("auth: %s", self._broken, extra={"status": status, "cause": oc.REAUTHORISATION_REQUIRED})
                raise self._broken
            if action == "wait_rate_limit":
                throttled += 1
                if throttled > MAX_THROTTLE_WAITS:
                    raise AuthFailure(
                        self.redactor.redact(f"{clause} (still throttled after {throttled - 1} waits)"),
                        fatal=False,
                        status=status,
                        body=self.redactor.redact(body),
                    )
                asked = seconds_until(headers.get("Retry-After")) if headers else None
                delay = asked if asked is not None else self._throttle_backoff(throttled)
            else:
                failures += 1
                if failures >= self.retries.max_attempts:
                    raise AuthFailure(
                        self.redactor.redact(f"{clause} (gave up after {failures} attempts)"),
                        fatal=False,
                        status=status,
                        body=self.redactor.redact(body),
                    )
                delay = backoff_delay(self.retries, failures, self._rng)
            log.warning(
                "auth: %s; minting again in %.1fs",
                self.redactor.redact(clause),
                delay,
                extra={"status": status, "retry_in_seconds": round(delay, 3)},
            )
            await self._sleep(delay)

    @staticmethod
    def _default_action(status: int | None, body: Any) -> str:
        """When no preset rule matches: re-authorise only on an explicit refusal of the grant."""
        if isinstance(body, Mapping) and body.get("error") == "invalid_grant":
            return "reauthorise"
        if status == 429:
            return "wait_rate_limit"
        return "retry"

    def _throttle_backoff(self, waits: int) -> float:
        """Exponential, from about a second up to the preset's backoff ceiling (no jitter: one minter)."""
        spec = self.retries
        return min(spec.max_seconds, max(1.0, spec.initial_seconds) * spec.multiplier ** (waits - 1))

    def token_request(self) -> HttpRequest:
        """The token request, client authentication as the preset declares it."""
        form = {"grant_type": self._grant}
        if self._grant == "refresh_token":
            form["refresh_token"] = self._refresh
        if self.spec.scopes and self._grant == "client_credentials":
            form["scope"] = " ".join(self.spec.scopes)
        return token_endpoint_request(
            self.spec, self._token_url, self._client_id, self._client_secret, form, self.redactor
        )

    async def _post(self) -> tuple[int | None, Any, Mapping[str, str]]:
        self._posting = True
        try:
            response = await self.transport.send(self.token_request())
        except TransportError as exc:
            # Exception text can quote the request; only its kind is safe to log.
            log.info("auth: token endpoint unreachable: %s", exc.kind, extra={"cause": exc.kind})
            return None, None, {}
        finally:
            self._posting = False
        return response.status, response.body, response.headers

    def _accept(self, body: dict[str, Any]) -> None:
        access = body["access_token"]
        # A rotating endpoint's answer carries the next refresh token; with
        # rotates_refresh_token: false the configured one stays in use.
        rotating = self._grant == "refresh_token" and self.spec.rotates_refresh_token
        rotated = body.get("refresh_token") if rotating else None
        self.redactor.add(access)
        if rotating and not (isinstance(rotated, str) and rotated):
            log.warning(
                "auth: the token endpoint answered no new refresh token although the preset says "
                "they rotate; keeping the current one"
            )
        if isinstance(rotated, str) and rotated:
            self.redactor.add(rotated)
            self._refresh = rotated
        lifetime = body.get("expires_in")
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else DEFAULT_TOKEN_LIFETIME
        values = answer_values(self.spec, body) or {}
        # The old refresh token is already dead upstream: persist the new one
        # before anything uses the access token minted with it.
        try:
            self._store.save(StoredTokens(self._refresh, access, time.time() + lifetime, values), self._configured)
        except OSError as exc:
            log.error(
                "auth: could not persist the rotated refresh token (%s); it is kept in memory "
                "only and will be lost when this process exits",
                type(exc).__name__,
            )
        self._access = access
        self._values = values
        self._expires_at = self._clock() + lifetime - self._margin(lifetime)
        self.mints += 1
        log.info("auth: minted an access token valid for %ds", int(lifetime), extra={"expires_in": int(lifetime)})


def token_endpoint_request(
    spec: AuthSpec, url: str, client_id: str, client_secret: str, form: dict[str, str], redactor: Redactor
) -> HttpRequest:
    """A form POST to the token endpoint, the client authenticated as the preset declares (RFC 6749 §2.3.1)."""
    headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    if spec.client_auth == "basic":
        pair = f"{_form_quote(client_id)}:{_form_quote(client_secret)}"
        basic = base64.b64encode(pair.encode()).decode("ascii")
        redactor.add(basic)
        headers["Authorization"] = f"Basic {basic}"
    else:
        form = {**form, "client_id": client_id, "client_secret": client_secret}
    return HttpRequest("POST", url, headers, form=form, authenticated=False)


def answer_values(spec: AuthSpec, answer: Mapping[str, Any]) -> dict[str, str] | None:
    """The values ``auth.token_values`` declares, from a token answer; None when one is missing or not text.

    A token answer without them is as useless as one without an access token:
    the request's URL cannot be built. It is retried like any other bad answer.
    """
    values = {name: answer.get(name) for name in spec.token_values}
    if not all(isinstance(v, str) and v for v in values.values()):
        return None
    return values  # type: ignore[return-value]


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a mint task's failure as seen even when every waiter was cancelled."""
    if not task.cancelled():
        task.exception()


def _form_quote(value: str) -> str:
    """RFC 6749 §2.3.1: client id and secret are form-urlencoded before the Basic pair is built."""
    from urllib.parse import quote_plus

    return quote_plus(value)


def _what_went_wrong(status: int | None, body: Any) -> str:
    if status is None:
        return "the token endpoint could not be reached"
    if 200 <= status < 300:
        if isinstance(body, Mapping) and isinstance(body.get("access_token"), str) and body["access_token"]:
            return f"the token endpoint answered {status} without a value the preset reads (auth.token_values)"
        return f"the token endpoint answered {status} without an access token"
    return f"the token endpoint answered {status}"


@contextlib.asynccontextmanager
async def store_lock(store: TokenStore, after_waiting: str) -> AsyncIterator[None]:
    """The state's refresh lock, when the store has one; waited for up to STORE_LOCK_WAIT_SECONDS.

    Past that, the work goes on without it (``after_waiting`` says how): a
    holder that hangs must not stop every refresh, and a lost race costs a
    token, not an event.
    """
    try_lock = getattr(store, "try_lock", None)
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
        log.warning("auth: the state's refresh lock stayed taken for %ds; %s", int(waited), after_waiting)
    try:
        yield
    finally:
        if locked:
            store.unlock()  # type: ignore[attr-defined]
