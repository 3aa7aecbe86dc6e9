"""Every request of one event's delivery, in order: the trail the console shows an opened event with.

A :class:`TrailingTransport` wraps the engine's transport and, while a
delivery has started a trail (:func:`start_trail`, a context variable of the
task that delivers the event), notes each request as it goes: whether it
carries the credential (else it is a token request), the method and URL (no
query string: a key may ride there), when it left and when it ended, and the
answer or the failure. Nothing is built or masked on the delivery path: a
request costs a few references.

The trail is private to the delivery that started it and to the record it is
handed to (:meth:`engine.state.record.Recorder.note`), never put on an
outcome: its values are the raw ones. Its lines, as the console shows them,
are built when the record is written (:meth:`Trail.unmasked_lines`: the step,
the method, the URL, the status or the failure, the time it took, the headers
that speak of rate limits, the response body capped and never a token
answer's), and the record masks them with the rest of its batch, after every
token of the batch's deliveries is known. :meth:`Trail.lines` gives them
masked, for any other reader.
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

# One request as sent: [carries the credential, method, URL, left, ended, the answer, (failure kind, message)].
_Sent = list[Any]


class Trail(list[_Sent]):
    """The requests of one delivery, in order, as sent; ``started`` is when the first one left.

    A list (made and filled at C speed: one is made per delivery); its items
    are the raw values, for :meth:`unmasked_lines` only.
    """

    started: float | None = None
    _by: TrailingTransport | None = None  # the transport that noted them (its redactor, its header names)

    def unmasked_lines(self, known: tuple[Any, int] | None = None) -> list[dict[str, Any]]:
        """Each request's line, its values as they were: for a caller that masks what it keeps (the record).

        Only a response body over :data:`BODY_CAP` is masked here, before it
        is cut (a cut could split a secret the caller would no longer find).
        ``known``: a body the caller has serialised already, and the length
        of its compact JSON text, so that it is not serialised again to be
        measured (the outcome's answer, nearly always the last request's).
        """
        by = self._by
        first = self.started or 0.0
        lines = []
        for authenticated, method, url, left, ended, response, failure in self:
            step = "request" if authenticated else "token"
            after_ms = round((left - first) * 10_000) / 10  # as _ms(), inline: one per request recorded
            if failure is not None:
                line: dict[str, Any] = {
                    "step": step,
                    "method": method,
                    "url": url,
                    "after_ms": after_ms,
                    "error": failure[0],
                    "detail": failure[1],
                    "ms": _ms(ended - left),
                }
            elif response is not None and by is not None:
                body = response.body
                if not authenticated:  # a token answer holds the tokens themselves: never kept
                    body = None
                elif known is None or body is not known[0] or 3 * known[1] > BODY_CAP:  # see _surely_short
                    body = _kept_body(body, by.redactor)
                line = {
                    "step": step,
                    "method": method,
                    "url": url,
                    "after_ms": after_ms,
                    "status": response.status,
                    "ms": round((ended - left) * 10_000) / 10,
                    "headers": by.rate_headers(response.headers),
                    "body": body,
                }
            else:
                line = {"step": step, "method": method, "url": url, "after_ms": after_ms}
            lines.append(line)
        return lines

    def lines(self, redactor: Redactor) -> list[dict[str, Any]]:
        """The lines masked: every string (names and values, at any depth) passes ``redactor``."""
        return [redactor.redact(line) for line in self.unmasked_lines()]


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
        # Each header name as it came, to itself as a plain ``str`` when it speaks of rate limits, else to '':
        # a destination answers with the same few names, so the pattern runs once per name.
        self._rate_names: dict[str, str] = {}

    async def send(self, request: HttpRequest) -> HttpResponse:
        trail = _TRAIL.get()
        if trail is None:
            return await self.inner.send(request)
        sent: _Sent = [request.authenticated, request.method, request.url, time.perf_counter(), None, None, None]
        if trail.started is None:
            trail.started = sent[3]
            trail._by = self
        trail.append(sent)
        try:
            response = await self.inner.send(request)
        except TransportError as exc:
            sent[4] = time.perf_counter()
            sent[6] = (exc.kind, str(exc))
            raise
        sent[4] = time.perf_counter()
        sent[5] = response
        return response

    def rate_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers that speak of rate limits, as they came (not masked), in order; a name repeated keeps its last value.

        One pass over the answer's headers (a multidict's items, made in C),
        each name looked up once in what is known of it: its plain ``str``
        (made once per name), or '' for a name that does not speak of rate
        limits. (A loop, not a comprehension that looks a name up twice: a
        third cheaper; ``map``/``filter`` over the items twice cost more.)
        """
        known = self._rate_names
        picked: dict[str, str] = {}
        try:
            for name, value in headers.items():
                plain = known[name]
                if plain:
                    picked[plain] = value
        except KeyError:  # a name not seen yet: learn every name of this answer, then pick
            if len(known) > 1024:  # a destination whose names vary without end: forget, stay small
                known.clear()
            for name in headers:
                if name not in known:
                    known[name] = str(name) if _RATE_HEADER.search(name) is not None else ""
            picked = {known[name]: value for name, value in headers.items() if known[name]}
        return picked


def _ms(seconds: float) -> float:
    """Milliseconds to a tenth (round() to a number of digits goes through a decimal string: several times slower)."""
    return round(seconds * 10_000) / 10


def _kept_body(body: Any, redactor: Redactor) -> Any:
    """A response body as the trail keeps it: itself when within the cap (most), else its text masked, then cut."""
    if body is None:
        return None
    if not isinstance(body, str) and _surely_short(body):
        return body
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, default=str)
    if len(text) <= BODY_CAP:
        return body
    text = redactor.redact(text) if isinstance(body, str) else redactor.redact_json(text)
    return text[:BODY_CAP] + f"… ({len(text) - BODY_CAP} more characters)"


def _capped(body: Any) -> Any:
    """``body`` within the cap: itself, or its text cut to :data:`BODY_CAP` characters (not masked)."""
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
