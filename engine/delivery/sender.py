"""Deliver: send a prepared request and let the preset's response rules decide what happens next.

The sender knows HTTP, not destinations. Which answer means "retry",
"refresh the credential", "merge into the existing record" or "give up"
comes from the preset's ``delivery.responses`` table; the sender only
carries it out, with the shared rate limiter in front of every request and
the credential applied last, so it exists nowhere but on the wire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from .. import outcome as oc
from ..language.expressions import ExpressionError
from ..language.model import AuthSpec, DeliverySpec, RuleSpec
from ..language.settings import Settings
from ..language.templates import TemplateError, fill_token_values
from ..loggers import package_logger
from ..outcome import Outcome
from ..pipeline.prepare import Prepared
from ..redaction import Redactor
from .auth import Auth, AuthFailure, apply_credential, masked_view, refuses_static_credential
from .exchange import Exchange, Step
from .rate_limit import RateLimiter, seconds_until
from .response_rules import Answer, first_match
from .retry_policy import backoff_delay
from .transport import HttpRequest, Transport, TransportError
from .upsert import Upserter, UpsertError

log = package_logger(__name__)

MAX_RATE_LIMIT_WAITS = 10


class Sender:
    """One per engine: shares the transport, the rate limiter and the credential across events."""

    def __init__(
        self,
        delivery: DeliverySpec,
        settings: Settings,
        auth: Auth | None,
        auth_spec: AuthSpec | None,
        limiter: RateLimiter,
        redactor: Redactor,
        transport: Transport,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.delivery = delivery
        self.settings = settings
        self.auth = auth
        self.auth_spec = auth_spec
        self.limiter = limiter
        self.redactor = redactor
        self.transport = transport
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.upserter = Upserter(self, settings)

    async def deliver(self, prepared: Prepared, attempts: list[int] | None = None) -> Outcome:
        """The event's one outcome. ``attempts[0]`` counts requests as they leave, so a caller
        that stops a delivery can tell one that never left from one that is on the wire."""
        attempts = [0] if attempts is None else attempts
        try:
            result = await self.upserter.deliver(prepared, attempts)
        except UpsertError as exc:
            result = self.failed(
                prepared, exc.cause, exc.message, exc.exchange, attempts[0], dead_letter=exc.dead_letter
            )
        result.warnings = prepared.warnings
        return result

    def first_request(self, prepared: Prepared) -> HttpRequest:
        return HttpRequest(prepared.method, prepared.url, dict(prepared.headers), body=prepared.body)

    # -- one request, under the response rules ---------------------------
    async def send(
        self,
        prepared: Prepared,
        request: HttpRequest,
        attempts: list[int],
        *,
        allow_upsert: bool,
        step: str = "create",
        rules: tuple[RuleSpec, ...] = (),
    ) -> Step:
        """Send under the response rules: ``rules`` (a flow step's own) first, then ``delivery.responses``."""
        failures = rate_waits = 0
        refreshed = False
        while True:
            credential = None
            if self.auth is not None:
                try:
                    credential = await self.auth.credential()
                except AuthFailure as exc:
                    return Step("auth", None, None, exc)
                try:
                    request = self._with_token_values(request)
                except TemplateError as exc:
                    return Step("auth", None, None, AuthFailure(str(exc), fatal=False))
            await self.limiter.acquire()
            attempts[0] += 1
            exchange = await self._http(request, credential, step)
            self.limiter.observe(exchange.response.headers if exchange.response is not None else {})
            answer = exchange.answer()
            rule = (first_match(rules, answer) if rules else None) or first_match(self.delivery.rules, answer)
            verdict = rule.then if rule else _default_verdict(exchange)
            self._log_attempt(prepared, attempts[0], exchange, verdict)
            if verdict == "deliver" or (verdict == "upsert" and allow_upsert):
                return Step(verdict, exchange, rule)
            if verdict == "refresh_auth":
                if self.auth is None or credential is None or refreshed:
                    return Step("unauthorised", exchange, rule, renewed=refreshed)
                refreshed = True
                try:
                    if not await self.auth.refresh(credential):
                        return Step("unauthorised", exchange, rule)
                except AuthFailure as exc:
                    return Step("auth", exchange, rule, exc)
                continue
            if verdict == "wait_rate_limit":
                rate_waits += 1
                if rate_waits > MAX_RATE_LIMIT_WAITS:
                    return Step("exhausted", exchange, rule, tries=failures + rate_waits)
                self.limiter.pause_for(self._rate_limit_wait(exchange, answer, rate_waits))
                continue
            if verdict == "retry":
                failures += 1
                if failures >= self.delivery.retries.max_attempts:
                    return Step("exhausted", exchange, rule, tries=failures)
                await self._sleep(self._retry_delay(exchange, failures))
                continue
            return Step("fail", exchange, rule)

    def _with_token_values(self, request: HttpRequest) -> HttpRequest:
        """``{token.NAME}`` filled from the answer that gave the current access token (just obtained)."""
        values = getattr(self.auth, "token_values", None)
        if values is None or not (self.auth_spec and self.auth_spec.token_values):
            return request
        known = values()
        return dataclasses.replace(
            request,
            url=fill_token_values(request.url, known),
            headers={k: fill_token_values(v, known, header=True) for k, v in request.headers.items()},
        )

    def _rate_limit_wait(self, exchange: Exchange, answer: Answer, waits: int) -> float:
        """A 429's wait: the preset's expression over the body, Retry-After, the window reset, else backoff."""
        spec = self.delivery.rate_limit
        if spec.wait_from_response is not None and answer.data:
            try:
                asked = spec.wait_from_response.evaluate(answer.data)
            except ExpressionError:
                asked = None
            if isinstance(asked, (int, float)) and not isinstance(asked, bool) and asked >= 0:
                return float(asked)
        headers = exchange.response.headers if exchange.response is not None else {}
        delay = self.limiter.reset_delay(headers, spec.retry_after_header)
        return delay if delay is not None else backoff_delay(self.delivery.retries, waits, self._rng)

    def _retry_delay(self, exchange: Exchange, failures: int) -> float:
        header = self.delivery.rate_limit.retry_after_header
        headers = exchange.response.headers if exchange.response is not None else {}
        asked = seconds_until(headers.get(header)) if header and headers.get(header) else None
        if asked is not None:
            # Maintenance with Retry-After applies to every request, not just this one.
            self.limiter.pause_for(asked)
            return 0.0
        return backoff_delay(self.delivery.retries, failures, self._rng)

    async def _http(self, request: HttpRequest, credential: str | None, step: str) -> Exchange:
        exchange = Exchange(request, step=step)
        wire = HttpRequest(request.method, request.url, dict(request.headers), list(request.query), request.body)
        if credential is not None and self.auth_spec is not None:
            apply_credential(self.auth_spec, wire, credential)
        try:
            exchange.response = await self.transport.send(wire)
        except TransportError as exc:
            exchange.transport_error = exc.kind
            exchange.error_text = self.redactor.redact(str(exc))
        return exchange

    # -- outcomes -------------------------------------------------------------
    def outcome(self, prepared: Prepared, step: Step, attempts: int, *, what: str = "create") -> Outcome:
        """The event's one outcome from the step that ended it; ``what`` names the step in messages."""
        ex = step.exchange
        request = self.view(ex.request) if ex else self.view(self.first_request(prepared))
        response = self.redactor.redact(ex.response_view()) if ex else None
        message = step.rule.message if step.rule and step.rule.message else None
        if message is None and ex is not None and ex.response is None:
            message = ex.error_text  # no rule spoke for a failure with no answer: say what it was

        def make(kind: str, cause: str | None, detail: str | None) -> Outcome:
            return Outcome(
                prepared.index,
                prepared.message_id,
                kind,
                cause=cause,
                detail=detail,
                request=request,
                response=response,
                attempts=attempts,
            )

        if step.verdict == "deliver":
            return make(oc.DELIVERED, None, None)
        if step.verdict == "auth":
            err = step.auth_error
            auth_cause = oc.REAUTHORISATION_REQUIRED if err and err.fatal else oc.AUTH_UNAVAILABLE
            return make(oc.DEAD_LETTERED, auth_cause, self.redactor.redact(str(err)))
        if (
            ex is not None
            and step.verdict in ("fail", "exhausted", "unauthorised")
            and refuses_static_credential(self.auth_spec, ex.status)
        ):
            assert self.auth_spec is not None
            fix = message or (
                f"the destination refused the {self.auth_spec.type} credential ({ex.status} to the "
                f"{what} {ex.request.method} {self.view(ex.request)['url']}); fix it in the settings"
            )
            return make(
                oc.DEAD_LETTERED,
                oc.AUTH_REJECTED,
                f"{fix.rstrip('.')}; then `signal-engine dlq replay` sends this event again",
            )
        cause = (ex.transport_error if ex.status is None else oc.http_cause(ex.status)) if ex else oc.UNKNOWN
        if step.verdict in ("exhausted", "unauthorised"):
            target = f"the {what} ({ex.request.method} {self.view(ex.request)['url']})" if ex else f"the {what}"
            if step.verdict == "unauthorised":
                detail = (
                    f"{target} was still refused after the credential was renewed"
                    if step.renewed
                    else f"{target} was refused"
                )
            else:
                detail = f"gave up after {step.tries} attempts of {target}"
            return make(oc.DEAD_LETTERED, cause, detail + (f": {message}" if message else ""))
        if step.rule is not None and step.rule.then == "upsert":
            message = f"the destination reported a conflict again during the {what}"
        return make(
            oc.FAILED, cause, message or f"the destination answered {ex.status if ex else 'nothing'} to the {what}"
        )

    def failed(
        self,
        prepared: Prepared,
        cause: str,
        detail: str,
        ex: Exchange | None,
        attempts: int,
        *,
        dead_letter: bool = False,
    ) -> Outcome:
        return Outcome(
            prepared.index,
            prepared.message_id,
            oc.DEAD_LETTERED if dead_letter else oc.FAILED,
            cause=cause,
            detail=self.redactor.redact(detail),
            request=self.view(ex.request if ex else self.first_request(prepared)),
            response=self.redactor.redact(ex.response_view()) if ex else None,
            attempts=attempts,
        )

    def original_request(self, prepared: Prepared) -> dict[str, Any]:
        """The first request of the event (masked): what a replay must start from."""
        return self.view(self.first_request(prepared))

    def view(self, request: HttpRequest) -> dict[str, Any]:
        """A request as a person may see it: credential masked, known secrets scrubbed."""
        return self.redactor.redact(masked_view(self.auth_spec, request))

    def _log_attempt(self, prepared: Prepared, attempt: int, ex: Exchange, verdict: str) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        answer = ex.status if ex.status is not None else f"{ex.transport_error} ({ex.error_text})"
        url = self.view(ex.request)["url"]
        fields = {
            "event_index": prepared.index,
            "messageId": prepared.message_id,
            "attempt": attempt,
            "method": ex.request.method,
            "url": url,
            "status": ex.status,
            "verdict": verdict,
        }
        if ex.status is None:
            fields["cause"] = ex.transport_error
        log.info(
            "%s",
            self.redactor.redact(
                f"event {prepared.index} attempt {attempt}: {ex.request.method} {url} -> {answer} => {verdict}"
            ),
            extra=fields,
        )


def _default_verdict(exchange: Exchange) -> str:
    """When no rule matches: success is success, transient is retried, the rest is final."""
    status = exchange.status
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "deliver"
    if status >= 500 or status == 408:
        return "retry"
    return "fail"
