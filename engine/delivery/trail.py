"""Every request of one event's delivery, in order: the trail the console shows an opened event with.

A :class:`TrailingTransport` wraps the engine's transport and, while a
delivery has started a trail (:func:`start_trail`, a context variable of the
task that delivers the event), appends one line per request: the step
(create, lookup, update, token), the method and URL (no query string: a key
may ride there), the status or the failure, the time it took, the headers
that speak of rate limits, and the response body, capped (never a token
answer's). Request bodies and headers are not kept (the outcome holds the masked request); every string
passes the engine's redactor (a response body and the headers as their JSON text: see ``_masked``).
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..envelope import HttpRequest
from ..redaction import Redactor
from .transport import HttpResponse, Transport, TransportError

BODY_CAP = 2048  # characters of each response body kept
_RATE_HEADER = re.compile(r"rate.?limit|retry-after", re.I)


class Trail(list[dict[str, Any]]):
    """The requests of one delivery, in order; ``started`` is when the first one left."""

    started: float | None = None


_TRAIL: contextvars.ContextVar[Trail | None] = contextvars.ContextVar("signal_trail", default=None)


def start_trail() -> Trail:
    """A new trail for the delivery running in this task (and the tasks it starts)."""
    trail = Trail()
    _TRAIL.set(trail)
    return trail


class TrailingTransport:
    def __init__(self, inner: Transport, redactor: Redactor) -> None:
        self.inner = inner
        self.redactor = redactor
        # Whether a header name speaks of rate limits: a destination answers with the same few names.
        self._rate_names: dict[str, bool] = {}

    async def send(self, request: HttpRequest) -> HttpResponse:
        trail = _TRAIL.get()
        if trail is None:
            return await self.inner.send(request)
        started = time.perf_counter()
        if trail.started is None:
            trail.started = started
        line: dict[str, Any] = {
            "step": "request" if request.authenticated else "token",
            "method": request.method,
            "url": self.redactor.redact(request.url),
            "after_ms": round((started - trail.started) * 1000, 1),
        }
        trail.append(line)
        try:
            response = await self.inner.send(request)
        except TransportError as exc:
            line.update(
                error=exc.kind,
                detail=self.redactor.redact(str(exc)),
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
            raise
        line.update(
            status=response.status,
            ms=round((time.perf_counter() - started) * 1000, 1),
            headers=self._rate_headers(response.headers),
            # A token answer holds tokens the redactor learns of only after this: never kept.
            body=_kept_body(response.body, self.redactor) if request.authenticated else None,
        )
        return response

    def _rate_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        known = self._rate_names
        if len(known) > 1024:  # a destination that makes up header names: forget, stay small
            known.clear()
        redact = self.redactor.redact
        kept = {}
        for name, value in headers.items():
            rate = known.get(name)
            if rate is None:
                rate = known[str(name)] = _RATE_HEADER.search(name) is not None
            if rate:
                kept[redact(str(name))] = redact(value)
        return kept


def _kept_body(body: Any, redactor: Redactor) -> Any:
    """A response body as the trail keeps it, capped and masked: a short one (most) serialised once for both."""
    if body is not None and not isinstance(body, str):
        try:
            text = orjson.dumps(body, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):
            text = None
        if text is not None and 3 * len(text) <= BODY_CAP:  # surely within the cap (see _surely_short)
            return _masked_as(body, text, redactor)
    return _masked(_capped(body), redactor)


def _masked(value: Any, redactor: Redactor) -> Any:
    """``value`` with every known secret masked: as its JSON text, one pass per secret form.

    Several times cheaper than walking the structure string by string, and
    the value itself is kept when the text holds no secret (nearly always).
    A value orjson cannot write, or a text that no longer reads after
    masking, is masked string by string instead.
    """
    if value is None or isinstance(value, str):
        return redactor.redact(value)
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return redactor.redact(value)
    return _masked_as(value, text, redactor)


def _masked_as(value: Any, text: str, redactor: Redactor) -> Any:
    """``value``, whose JSON text is ``text``, masked."""
    masked = redactor.redact_json(text)
    if masked is text:
        return value
    try:
        return orjson.loads(masked)
    except orjson.JSONDecodeError:
        return redactor.redact(value)


def _capped(body: Any) -> Any:
    if body is None:
        return None
    if not isinstance(body, str) and _surely_short(body):
        return body
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, default=str)
    return body if len(text) <= BODY_CAP else text[:BODY_CAP] + f"… ({len(text) - BODY_CAP} more characters)"


def _surely_short(body: Any) -> bool:
    """Whether ``json.dumps(body)`` is surely within the cap, from orjson's compact text (several times cheaper).

    The standard library's text is longer by a space after each separator and
    by at most a few characters per number (``1e+16``, ``-Infinity``): never
    more than three times the compact one. Anything orjson refuses takes the
    exact road.
    """
    try:
        return 3 * len(orjson.dumps(body, default=str)) <= BODY_CAP
    except (TypeError, orjson.JSONEncodeError):
        return False
