"""The HTTP intake: where tracking SDKs and servers post events. It answers 200 only once they are queued.

Routes:

* ``POST /v1/events``, Signal's server API: one event, or ``{"batch": [...]}``,
  signed with HMAC-SHA256: ``X-Signature: sha256=<hex>`` over
  ``X-Timestamp + "." + body``, the body exactly as sent (compressed, if it
  is), the timestamp in Unix milliseconds and at most 5 minutes off;
* the Segment-compatible routes, so existing SDKs work unchanged:
  ``/v1/batch``, ``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``,
  ``/v1/group``, with a write key as the HTTP Basic username (or as
  ``writeKey`` in the body, as some SDKs send it);
* ``GET /healthz`` (the process answers), ``/readyz`` (it takes events now)
  and ``/metrics`` (Prometheus).

Bodies may be gzip-compressed (``Content-Encoding: gzip``). Answers: 200
``{"success": true, "queued": N}``; 400 naming the problem (not UTF-8, not
JSON, nested over 64 levels, a number JSON cannot carry); 401 for a bad
signature, timestamp or key; 404 and 405 (JSON, like every error); 408 when
the body does not arrive within the body timeout; 409 ``replayed`` for a
signed request already accepted (:mod:`.replay`); 413 over the size cap
(compressed or not); 429 with ``Retry-After`` when the backlog is at its
bound (the client keeps the events and retries: backpressure, never silent
loss), or ``in_flight`` when a copy of the same signed request is being
queued right now (it may yet fail); 503 while draining or when the queue cannot be written. Errors are
``{"error": ..., "code": ..., "message": ...}`` (``code`` and ``message`` are
what Segment's SDKs read). No answer, log line or metric holds a key, a
secret or a signature. Any bytes or JSON get one of these, never a 5xx: a
lone surrogate is accepted escaped (:mod:`.event_json`), and a failed queue
write leaves nothing behind for the next request.

Validation here is only what makes a request unusable as a whole: a body
that is not JSON, a batch that is not a list of objects. Everything else
is the pipeline's to judge, and each event gets its outcome there.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ..loggers import package_logger
from ..state.queue import EventQueue
from . import event_json
from .http_hygiene import error_middleware, server_options
from .metrics import Metrics
from .replay import COMMITTED, IN_FLIGHT, SignatureMemory

log = package_logger(__name__)

MAX_BODY_BYTES = 512 * 1024  # Segment's documented batch limit is 500 KB
MAX_BACKLOG = 100_000
CLOCK_SKEW_SECONDS = 300.0
RETRY_AFTER_SECONDS = 1
IDLE_TIMEOUT_SECONDS = 15.0  # no complete request head this long after the connection opened or its last answer
BODY_TIMEOUT_SECONDS = 30.0  # a body not fully arrived this long after its head
LINGER_SECONDS = 1.0  # reading what is left of a refused body, so the client sees the answer
MAX_REMEMBERED_SIGNATURES = 200_000
SEGMENT_TYPES = ("track", "identify", "page", "screen", "group")
_MILLISECONDS = re.compile(r"[0-9]{1,16}")

Remember = Callable[[Mapping[str, Any]], None]
RememberMany = Callable[[Sequence[Mapping[str, Any]]], None]


@dataclass
class IntakeConfig:
    """Who may post and how much. ``write_keys`` and ``signing_secret`` are secrets: never shown."""

    write_keys: frozenset[str] = field(default_factory=frozenset)
    signing_secret: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_backlog: int = MAX_BACKLOG
    clock_skew_seconds: float = CLOCK_SKEW_SECONDS
    idle_timeout_seconds: float = IDLE_TIMEOUT_SECONDS
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS
    max_remembered_signatures: int = MAX_REMEMBERED_SIGNATURES

    def __repr__(self) -> str:  # a config printed by mistake shows no secret
        return (
            f"IntakeConfig(write_keys=<{len(self.write_keys)} keys>, signing_secret="
            f"{'<set>' if self.signing_secret else None}, max_body_bytes={self.max_body_bytes}, "
            f"max_backlog={self.max_backlog}, idle_timeout_seconds={self.idle_timeout_seconds:g}, "
            f"body_timeout_seconds={self.body_timeout_seconds:g})"
        )


class Refused(Exception):
    """One request refused: the status, a short code and a message naming the problem."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        result: str,
        headers: Mapping[str, str] | None = None,
        events: int = 1,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.result = result
        self.headers = dict(headers or {})
        self.events = events
        self.close = close

    def response(self) -> web.Response:
        response = error_response(self.status, self.code, self.message, self.headers)
        if self.close:
            response.force_close()
        return response


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """The intake's one error shape: ``code`` and ``message`` are what Segment's SDKs read."""
    return web.json_response(
        {"success": False, "error": message, "code": code, "message": message},
        status=status,
        headers=dict(headers or {}),
    )


class Intake:
    """One intake app's state: the queue it appends to, whether it is draining, its metrics."""

    def __init__(
        self,
        queue: EventQueue,
        config: IntakeConfig,
        metrics: Metrics,
        *,
        remember: Remember | None = None,
        remember_many: RememberMany | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.config = config
        self.metrics = metrics
        self.remember = remember
        # A request's identifies at once (``remember`` is called for each when this is not given).
        self.remember_many = remember_many
        self.draining = False
        # Why no event is taken yet (a service with no integration to deliver to): each is refused with this.
        self.refusing: str | None = None
        self.ready_check: Callable[[], Awaitable[bool]] | None = None
        self._clock = clock
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.signatures = SignatureMemory(2 * config.clock_skew_seconds, config.max_remembered_signatures, clock)

    async def drained(self) -> None:
        """Wait until no request is being answered (after :attr:`draining` was set)."""
        await self._idle.wait()

    # -- routes ---------------------------------------------------------------
    async def events(self, request: web.Request) -> web.Response:
        """One event or a batch, signed with HMAC-SHA256 (``X-Signature``), appended to the queue."""
        return await self._handle(request, "events", self._signed)

    def segment(self, kind: str | None) -> Callable[[web.Request], Awaitable[web.Response]]:
        route = kind or "batch"

        async def handler(request: web.Request) -> web.Response:
            """A Segment-compatible route (HTTP Basic write key): the event the path names, or a batch."""
            return await self._handle(request, route, self._keyed)

        return handler

    async def healthz(self, _: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        """Readiness: 503 while draining or when the queue cannot take writes."""
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        try:
            await self.queue.backlog()
            writable = getattr(self.queue, "writable", None)
            if writable is not None and not await writable():
                return web.json_response(
                    {"status": "the queue cannot take writes (disk full or read-only?)"}, status=503
                )
            if self.ready_check is not None and not await self.ready_check():
                return web.json_response({"status": "not ready"}, status=503)
        except OSError:
            return web.json_response({"status": "the queue cannot be reached"}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_page(self, _: web.Request) -> web.Response:
        """The Prometheus metrics of this process (docs/reference/metrics.md)."""
        body, content_type = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    # -- one request ----------------------------------------------------------
    async def _handle(
        self, request: web.Request, route: str, authenticate: Callable[[web.Request, bytes], bytes | None]
    ) -> web.Response:
        self._in_flight += 1
        self._idle.clear()
        reserved: bytes | None = None
        try:
            if self.draining:
                raise Refused(
                    503,
                    "draining",
                    "the intake is shutting down; retry shortly",
                    "draining",
                    {"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            if self.refusing is not None:
                # Taken now, an event would wait for an integration that may never come: refused, it is retried.
                raise Refused(
                    503, "no_integration", self.refusing, "unavailable", {"Retry-After": str(RETRY_AFTER_SECONDS)}
                )
            raw = await self._read(request)
            reserved = authenticate(request, raw)
            body = self._decode(request, raw)
            document = _parse(body)
            if route != "events" and request.headers.get("Authorization") is None:
                self._check_key(document.get("writeKey") if isinstance(document, dict) else None)
            events = _events(route, document)
            await self._queue(events)
            if reserved is not None:
                self.signatures.commit(reserved)  # queued: from now on a copy is a replay
        except BaseException as exc:
            if reserved is not None:
                self.signatures.forget(reserved)  # not accepted: the client may send it again
            if not isinstance(exc, Refused):
                raise
            self.metrics.received.labels(route, exc.result).inc(exc.events)
            return exc.response()
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        self.metrics.received.labels(route, "accepted").inc(len(events))
        return web.json_response({"success": True, "queued": len(events)})

    async def _read(self, request: web.Request) -> bytes:
        cap = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > cap:
            raise Refused(
                413, "too_large", f"the body is {request.content_length} bytes; the limit is {cap}", "too_large"
            )
        chunks: list[bytes] = []
        size = 0
        seconds = self.config.body_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > cap:
                        raise Refused(413, "too_large", f"the body is over the limit of {cap} bytes", "too_large")
                    chunks.append(chunk)
        except TimeoutError:
            raise Refused(
                408,
                "request_timeout",
                f"the body did not arrive within {seconds:g} seconds of the request's head",
                "timeout",
                close=True,
            ) from None
        return b"".join(chunks)

    def _signed(self, request: web.Request, raw: bytes) -> bytes:
        secret = self.config.signing_secret
        if not secret:
            raise Refused(
                401,
                "unauthorized",
                "signed requests are not enabled here (no signing secret is configured)",
                "unauthorized",
            )
        stamp = request.headers.get("X-Timestamp", "").strip()
        signature = request.headers.get("X-Signature", "").strip()
        if not stamp or not signature:
            raise Refused(401, "unauthorized", "X-Timestamp and X-Signature headers are required", "unauthorized")
        if not _MILLISECONDS.fullmatch(stamp):  # ASCII digits only: int() would take other scripts' digits too
            raise Refused(401, "unauthorized", "X-Timestamp must be Unix time in milliseconds", "unauthorized")
        sent_ms = int(stamp)
        if abs(self._clock() - sent_ms / 1000.0) > self.config.clock_skew_seconds:
            raise Refused(
                401,
                "stale_timestamp",
                "X-Timestamp is more than 5 minutes from the server's clock "
                "(a replayed request, or a clock to set right)",
                "unauthorized",
            )
        expected = (
            "sha256=" + hmac.new(secret.encode("utf-8"), stamp.encode("ascii") + b"." + raw, hashlib.sha256).hexdigest()
        )
        if not hmac.compare_digest(expected.encode("ascii"), signature.lower().encode("ascii", "replace")):
            raise Refused(
                401,
                "bad_signature",
                'X-Signature does not match the body (HMAC-SHA256 of X-Timestamp + "." + body, as sha256=<hex>)',
                "unauthorized",
            )
        digest = bytes.fromhex(expected[len("sha256=") :])
        held = self.signatures.reserve(digest)
        if held == IN_FLIGHT:  # the first copy may still fail: "accepted" now could lose the events
            raise Refused(
                429,
                "in_flight",
                "this signed request is being queued on another connection right now; retry shortly",
                "in_flight",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if held == COMMITTED:
            raise Refused(
                409,
                "replayed",
                "this signed request was already accepted (the same X-Timestamp and "
                "X-Signature within the last 10 minutes); sign each new request with a fresh "
                "X-Timestamp",
                "replayed",
            )
        return digest

    def _keyed(self, request: web.Request, _: bytes) -> None:
        header = request.headers.get("Authorization")
        if header is None:
            return None  # the body's writeKey is checked once it is parsed
        scheme, _sep, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise Refused(401, "unauthorized", "use HTTP Basic with the write key as the username", "unauthorized")
        try:
            user = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
        except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 once decoded
            raise Refused(
                401, "unauthorized", "the Authorization header is not valid HTTP Basic", "unauthorized"
            ) from None
        self._check_key(user)

    def _check_key(self, key: Any) -> None:
        if not isinstance(key, str) or not key:
            raise Refused(401, "unauthorized", "a write key is required (the HTTP Basic username)", "unauthorized")
        # Compare with every key, always: the time taken does not tell which key nearly matched.
        known = False
        for candidate in self.config.write_keys:
            known |= hmac.compare_digest(candidate.encode("utf-8"), key.encode("utf-8", "replace"))
        if not known:
            raise Refused(401, "unauthorized", "unknown write key", "unauthorized")

    def _decode(self, request: web.Request, raw: bytes) -> bytes:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return raw
        if encoding not in ("gzip", "x-gzip"):
            raise Refused(
                400, "bad_request", f"Content-Encoding {encoding!r} is not supported (use gzip)", "bad_request"
            )
        cap = self.config.max_body_bytes
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(raw, cap + 1)
            if len(body) <= cap and not inflater.eof:
                body += inflater.flush()
        except zlib.error:
            raise Refused(400, "bad_request", "the body is not valid gzip", "bad_request") from None
        if len(body) > cap or inflater.unconsumed_tail:
            raise Refused(413, "too_large", f"the body is over the limit of {cap} bytes once decompressed", "too_large")
        if not inflater.eof:
            raise Refused(400, "bad_request", "the gzip body is truncated", "bad_request")
        return body

    async def _queue(self, events: list[dict[str, Any]]) -> None:
        identifies = (
            [event for event in events if event.get("type") == "identify"]
            if self.remember is not None or self.remember_many is not None
            else []
        )
        append_within = getattr(self.queue, "append_within", None)
        if append_within is not None and not identifies:
            # The backlog's bound checked and the events appended in one round trip (Redis), all or none.
            backlog = await self._write(append_within, [_body(e) for e in events], self.config.max_backlog)
            if backlog is not None:
                raise self._backlog_full(backlog, len(events))
            return
        try:
            backlog = await self.queue.backlog()
        except OSError:
            raise Refused(
                503,
                "unavailable",
                "the queue cannot be reached; retry shortly",
                "unavailable",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
                len(events),
            ) from None
        if backlog + len(events) > self.config.max_backlog:
            raise self._backlog_full(backlog, len(events))
        await self._write(self._remember_and_append, events)

    async def _remember_and_append(self, events: list[dict[str, Any]]) -> None:
        if self.remember is not None or self.remember_many is not None:
            # Identify traits are written before the 200, so a lead accepted after it is joined by any worker.
            identifies = [event for event in events if event.get("type") == "identify"]
            if identifies and self.remember_many is not None:
                self.remember_many(identifies)
            elif self.remember is not None:
                for event in identifies:
                    self.remember(event)
        await self.queue.append([_body(e) for e in events])

    async def _write(self, write: Callable[..., Awaitable[Any]], events: list[Any], *args: Any) -> Any:
        """``write(events, *args)``; a store that cannot be written is a 503, and nothing is queued."""
        try:
            return await write(events, *args)
        except OSError as exc:
            log.error("intake: could not queue %d event(s): %s", len(events), exc.strerror or type(exc).__name__)
            raise Refused(
                503,
                "unavailable",
                "the events could not be queued; retry shortly",
                "unavailable",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
                len(events),
            ) from None

    def _backlog_full(self, backlog: int, events: int) -> Refused:
        return Refused(
            429,
            "backlog_full",
            f"{backlog} events are waiting for delivery (the bound is {self.config.max_backlog}); retry later",
            "backlog_full",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
            events,
        )


def _parse(body: bytes) -> Any:
    try:
        return event_json.loads(body)
    except UnicodeDecodeError as exc:
        raise Refused(400, "bad_request", f"the body is not UTF-8 (byte {exc.start})", "bad_request") from None
    except event_json.EventJsonError as exc:
        raise Refused(400, "bad_request", f"the body {exc}", "bad_request") from None


def _body(event: dict[str, Any]) -> str:
    """The event as the queue keeps it: compact JSON (orjson; the stdlib for an integer beyond 64 bits)."""
    try:
        return orjson.dumps(event).decode("utf-8")
    except TypeError:  # orjson.JSONEncodeError: an integer only the stdlib writes exactly
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def _events(route: str, document: Any) -> list[dict[str, Any]]:
    """The events of a request, each checked to be an object."""
    if not isinstance(document, dict):
        raise Refused(400, "bad_request", f"the body must be a JSON object, not {_kind(document)}", "bad_request")
    if route in SEGMENT_TYPES:
        # Segment's single-event routes: the route says the type.
        return [{**document, "type": route}]
    if route == "batch" or "batch" in document:
        batch = document.get("batch")
        if not isinstance(batch, list):
            raise Refused(400, "bad_request", f"'batch' must be a list of events, not {_kind(batch)}", "bad_request")
        shared = document.get("context")
        events = []
        for i, item in enumerate(batch):
            if not isinstance(item, dict):
                raise Refused(
                    400,
                    "bad_request",
                    f"batch[{i}] must be a JSON object, not {_kind(item)}",
                    "bad_request",
                    events=len(batch),
                )
            if isinstance(shared, dict):
                # A batch-wide context (Segment's batch API) under each event's own.
                own = item.get("context")
                item = {**item, "context": {**shared, **own} if isinstance(own, dict) else dict(shared)}
            events.append(item)
        return events
    return [document]


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


# Serve the app with these: the intake decodes gzip itself, so that the
# signature covers the body as sent and the size cap holds once inflated.
# (``create_app`` sets them on the app as well, with the timeouts.)
RUNNER_OPTIONS: dict[str, Any] = {"auto_decompress": False}


def create_app(intake: Intake) -> web.Application:
    config = intake.config
    app = web.Application(
        client_max_size=config.max_body_bytes + 1,
        middlewares=[error_middleware(error_response)],
        handler_args=server_options(config.idle_timeout_seconds, min(LINGER_SECONDS, config.body_timeout_seconds)),
    )
    app.router.add_post("/v1/events", intake.events)
    app.router.add_post("/v1/batch", intake.segment(None))
    for kind in SEGMENT_TYPES:
        app.router.add_post(f"/v1/{kind}", intake.segment(kind))
    app.router.add_get("/healthz", intake.healthz)
    app.router.add_get("/readyz", intake.readyz)
    app.router.add_get("/metrics", intake.metrics_page)
    return app
