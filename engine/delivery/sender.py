"""Deliver: send a prepared request and let the preset's response rules decide what happens next.

The sender knows HTTP, not destinations. Which status means "retry", "refresh
the token", "merge into the existing record" or "give up" comes from the
preset's ``delivery.responses`` table; the sender only carries it out, with
the shared rate limiter in front of every request and the auth header applied
last, so the credential exists nowhere but on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
from multidict import CIMultiDict

from .. import outcome as oc
from ..language.expressions import ExpressionLimitError
from ..language.model import DeliverySpec
from ..language.settings import Settings
from ..language.templates import TemplateError
from ..outcome import Outcome
from ..pipeline.prepare import Prepared
from ..pipeline.transform import TransformError, build_document
from ..redaction import MASK, Redactor
from .auth import AuthFailure, RefreshTokenAuth
from .rate_limit import RateLimiter, seconds_until
from .response_rules import Answer, Rule, first_match
from .retry_policy import backoff_delay

log = logging.getLogger("signal_engine.delivery")

MAX_RATE_LIMIT_WAITS = 10
MAX_BODY_CHARS = 4000


@dataclass
class Exchange:
    """One HTTP attempt as the rules and the Event Debugger see it."""

    method: str
    url: str
    body: Any
    status: int | None = None
    response_body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    transport_error: str | None = None  # "timeout" | "connection"
    error_text: str | None = None

    def answer(self) -> Answer:
        if self.status is None:
            return Answer(None, transport_error=self.transport_error or "connection")
        return Answer.from_body(self.status, self.response_body)

    def response_view(self) -> dict[str, Any] | None:
        if self.status is None:
            return {"error": self.transport_error, "message": self.error_text}
        return {"status": self.status, "body": self.response_body}


@dataclass
class _Step:
    """How a request sequence ended: the rule's verdict and the last exchange."""

    verdict: str  # deliver | upsert | fail | exhausted | auth
    exchange: Exchange | None
    rule: Rule | None
    auth_error: AuthFailure | None = None
    tries: int = 0  # attempts of this one request (the outcome's attempts count the whole event)


class Sender:
    """One per engine: shares the session, the rate limiter and the token cache across events."""

    def __init__(self, delivery: DeliverySpec, settings: Settings, auth: RefreshTokenAuth | None,
                 limiter: RateLimiter, redactor: Redactor, session: aiohttp.ClientSession, *,
                 auth_header: str | None = None, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.delivery = delivery
        self.settings = settings
        self.auth = auth
        self.auth_header = auth_header
        self.limiter = limiter
        self.redactor = redactor
        self.session = session
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._timeout = aiohttp.ClientTimeout(total=delivery.timeout_seconds)  # also when the host brings the session

    async def deliver(self, prepared: Prepared) -> Outcome:
        attempts = [0]
        first = await self._send(prepared, prepared.method, prepared.url, prepared.body, None, attempts, allow_upsert=True)
        if first.verdict == "upsert":
            return await self._upsert(prepared, first, attempts)
        return self._outcome(prepared, first, attempts[0])

    # -- one request, under the response rules ---------------------------
    async def _send(self, prepared: Prepared, method: str, url: str, body: Any, params: Mapping[str, str] | None,
                    attempts: list[int], *, allow_upsert: bool) -> _Step:
        failures = rate_waits = 0
        refreshed = False
        while True:
            token = None
            if self.auth is not None:
                try:
                    token = await self.auth.token(self.session)
                except AuthFailure as exc:
                    return _Step("auth", None, None, exc)
            await self.limiter.acquire()
            attempts[0] += 1
            exchange = await self._http(method, url, prepared.headers, body, params, token)
            self.limiter.observe(exchange.headers)
            rule = first_match(self.delivery.rules, exchange.answer())
            verdict = rule.then if rule else _default_verdict(exchange)
            self._log_attempt(prepared, attempts[0], exchange, verdict)
            if verdict == "deliver" or (verdict == "upsert" and allow_upsert):
                return _Step(verdict, exchange, rule)
            if verdict == "refresh_auth" and self.auth is not None and token is not None and not refreshed:
                refreshed = True
                try:
                    await self.auth.refresh(self.session, token)
                except AuthFailure as exc:
                    return _Step("auth", exchange, rule, exc)
                continue
            if verdict == "wait_rate_limit":
                rate_waits += 1
                if rate_waits > MAX_RATE_LIMIT_WAITS:
                    return _Step("exhausted", exchange, rule, tries=failures + rate_waits)
                delay = self.limiter.reset_delay(exchange.headers, self.delivery.rate_limit.retry_after_header)
                self.limiter.pause_for(delay if delay is not None else backoff_delay(self.delivery.retries, rate_waits, self._rng))
                continue
            if verdict == "retry":
                failures += 1
                if failures >= self.delivery.retries.max_attempts:
                    return _Step("exhausted", exchange, rule, tries=failures)
                await self._sleep(self._retry_delay(exchange, failures))
                continue
            return _Step("fail", exchange, rule)

    def _retry_delay(self, exchange: Exchange, failures: int) -> float:
        header = self.delivery.rate_limit.retry_after_header
        asked = seconds_until(exchange.headers.get(header)) if header and exchange.headers.get(header) else None
        if asked is not None:
            # Maintenance with Retry-After applies to every request, not just this one.
            self.limiter.pause_for(asked)
            return 0.0
        return backoff_delay(self.delivery.retries, failures, self._rng)

    async def _http(self, method: str, url: str, headers: Mapping[str, str], body: Any,
                    params: Mapping[str, str] | None, token: str | None) -> Exchange:
        exchange = Exchange(method, url, body)
        send_headers = dict(headers)
        if token is not None and self.auth is not None and self.auth_header:
            send_headers[self.auth_header] = self.auth.header_value(token)
        data = _encode(body) if body is not None else None
        if data is None:
            send_headers.pop("Content-Type", None)
        try:
            # Redirects are not followed: a 301 would turn a create into a GET
            # that "succeeds", and would carry the credential to another host.
            async with self.session.request(method, url, data=data, params=params, headers=send_headers,
                                            allow_redirects=False, timeout=self._timeout) as resp:
                text = await resp.text(errors="replace")
                exchange.status = resp.status
                exchange.headers = CIMultiDict(resp.headers)  # header names are case-insensitive
                exchange.response_body = _parse_body(text)
        except asyncio.TimeoutError:
            exchange.transport_error, exchange.error_text = "timeout", f"no answer within {self.delivery.timeout_seconds:g}s"
        except (aiohttp.ClientError, ValueError) as exc:
            exchange.transport_error = "connection"
            exchange.error_text = self.redactor.redact(str(exc) or type(exc).__name__)[:300]
        return exchange

    # -- upsert -------------------------------------------------------------
    async def _upsert(self, prepared: Prepared, conflict: _Step, attempts: list[int]) -> Outcome:
        action = prepared.action
        spec = action.upsert
        if spec is None:
            return self._outcome(prepared, _Step("fail", conflict.exchange, conflict.rule), attempts[0])
        public = self.settings.public()
        context = {"document": prepared.body, "traits": prepared.traits, "settings": public}
        where = f"actions.{action.name}.upsert"
        try:
            params = spec.lookup_query.evaluate(context) if spec.lookup_query else None
            lookup_url = spec.lookup_url.render({"settings": public})
        except Exception as exc:  # noqa: BLE001 - ExpressionError/TemplateError: a preset bug
            return self._failed(prepared, _upsert_cause(exc), f"{where}.lookup: {exc}", conflict.exchange, attempts[0])
        if params is not None and not isinstance(params, dict):
            return self._failed(prepared, "upsert_error", f"{where}.lookup.query must give an object", conflict.exchange, attempts[0])
        params = {str(k): str(v) for k, v in (params or {}).items()}
        lookup = await self._send(prepared, spec.lookup_method, lookup_url, None, params, attempts, allow_upsert=False)
        if lookup.verdict != "deliver":
            return self._outcome(prepared, lookup, attempts[0])
        try:
            found = spec.found.evaluate(lookup.exchange.response_body if lookup.exchange else None)
        except Exception as exc:  # noqa: BLE001
            return self._failed(prepared, _upsert_cause(exc), f"{where}.lookup.found: {exc}", lookup.exchange, attempts[0])
        if not isinstance(found, dict):
            # Usually search lagging behind the create: keep it for a replay.
            result = self._failed(prepared, "upsert_not_found",
                                  "the destination reported a duplicate but the lookup found no existing record yet",
                                  lookup.exchange, attempts[0])
            result.outcome = oc.DEAD_LETTERED
            return result
        try:
            body = build_document(action, spec.update_body, {**context, "found": found}, f"{where}.update.body")
            url = spec.update_url.render({"settings": public, "found": found})
        except TransformError as exc:
            return self._failed(prepared, exc.cause, str(exc), lookup.exchange, attempts[0])
        except TemplateError as exc:
            return self._failed(prepared, "upsert_error", f"{where}.update.url: {exc}", lookup.exchange, attempts[0])
        update = await self._send(prepared, spec.update_method, url, body, None, attempts, allow_upsert=False)
        result = self._outcome(prepared, update, attempts[0])
        if result.outcome == oc.DELIVERED:
            merged = conflict.rule.message if conflict.rule and conflict.rule.message else "merged into the existing record"
            result.detail = f"{merged} (id {found.get('id')})"
        return result

    # -- outcomes -------------------------------------------------------------
    def _outcome(self, prepared: Prepared, step: _Step, attempts: int) -> Outcome:
        ex = step.exchange
        request = self._request_view(prepared, ex)
        response = self.redactor.redact(ex.response_view()) if ex else None
        message = step.rule.message if step.rule and step.rule.message else None
        if step.verdict == "fail" and step.rule is not None and step.rule.then == "upsert":
            message = "the destination reported a conflict again while updating the existing record"
        if step.verdict == "deliver":
            return Outcome(prepared.index, prepared.message_id, oc.DELIVERED, request=request, response=response, attempts=attempts)
        if step.verdict == "auth":
            err = step.auth_error
            cause = "reauthorisation_required" if err and err.fatal else "auth_unavailable"
            return Outcome(prepared.index, prepared.message_id, oc.DEAD_LETTERED, cause=cause,
                           detail=self.redactor.redact(str(err)), request=request, response=response, attempts=attempts)
        cause = (ex.transport_error if ex.status is None else f"http_{ex.status}") if ex else "unknown"
        if step.verdict == "exhausted":
            what = f"{ex.method} {ex.url}" if ex else "the request"
            detail = f"gave up after {step.tries} attempts of {what}" + (f": {message}" if message else "")
            return Outcome(prepared.index, prepared.message_id, oc.DEAD_LETTERED, cause=cause, detail=detail,
                           request=request, response=response, attempts=attempts)
        return Outcome(prepared.index, prepared.message_id, oc.FAILED, cause=cause,
                       detail=message or f"the destination answered {ex.status if ex else 'nothing'}",
                       request=request, response=response, attempts=attempts)

    def _failed(self, prepared: Prepared, cause: str, detail: str, ex: Exchange | None, attempts: int) -> Outcome:
        return Outcome(prepared.index, prepared.message_id, oc.FAILED, cause=cause, detail=self.redactor.redact(detail),
                       request=self._request_view(prepared, ex), response=self.redactor.redact(ex.response_view()) if ex else None,
                       attempts=attempts)

    def original_request(self, prepared: Prepared) -> dict[str, Any]:
        """The first request of the event (masked): what a replay must start from."""
        return self._request_view(prepared, None)

    def _request_view(self, prepared: Prepared, ex: Exchange | None) -> dict[str, Any]:
        """The last request sent, as a person may see it (credential masked)."""
        headers = dict(prepared.headers)
        if self.auth is not None and self.auth_header:
            headers[self.auth_header] = self.auth.header_value(MASK)
        if ex is None:
            return {"method": prepared.method, "url": prepared.url, "headers": headers, "body": prepared.body}
        if ex.body is None:
            headers.pop("Content-Type", None)
        view = {"method": ex.method, "url": ex.url, "headers": headers}
        if ex.body is not None:
            view["body"] = ex.body
        return self.redactor.redact(view)

    def _log_attempt(self, prepared: Prepared, attempt: int, ex: Exchange, verdict: str) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        answer = ex.status if ex.status is not None else f"{ex.transport_error} ({ex.error_text})"
        log.info("%s", self.redactor.redact(
            f"event {prepared.index} attempt {attempt}: {ex.method} {ex.url} -> {answer} => {verdict}"))


def _upsert_cause(exc: Exception) -> str:
    """A guard that stopped an upsert expression is named as such; anything else is a preset bug."""
    return "expression_limit" if isinstance(exc, ExpressionLimitError) else "upsert_error"


def _default_verdict(exchange: Exchange) -> str:
    """When no rule matches: success is success, transient is retried, the rest is final."""
    if exchange.status is None:
        return "retry"
    if 200 <= exchange.status < 300:
        return "deliver"
    if exchange.status >= 500 or exchange.status == 408:
        return "retry"
    return "fail"


def _encode(body: Any) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from the input: escaped JSON is still valid JSON.
        return json.dumps(body, ensure_ascii=True).encode("ascii")


def _parse_body(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text[:MAX_BODY_CHARS]

