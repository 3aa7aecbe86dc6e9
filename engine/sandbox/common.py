"""What every local vendor fake shares: injected faults, a fixed-window quota, the API plumbing, serving.

Each sandbox imitates one vendor's API (auth, bodies, errors, rate-limit
headers). What real infrastructure does to *any* API — error pages, dropped
connections, slow answers — how an API request passes a vendor's limits and
faults and is recorded, the admin endpoints, and how a fake is started,
stopped and driven by tests are the same for all of them, so they live here
once, parameterised by what each vendor says differently.

A sandbox state object that wants faults carries three attributes:
``faults`` (a deque of :class:`Fault`), ``fault_rate`` and ``rng``; one that
also carries ``fault_mix`` (see :func:`parse_fault_mix`) draws from it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import math
import random
import signal
import sys
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = [
    "DEFAULT",
    "RANDOM_FAULT_CHOICES",
    "Admission",
    "Fault",
    "FaultTarget",
    "FaultedState",
    "FixedWindowQuota",
    "JsonError",
    "SandboxDemo",
    "SandboxError",
    "add_fault_arguments",
    "add_serve_arguments",
    "admin_faults_handler",
    "api_middleware",
    "apply_fault",
    "base_url",
    "basic_credentials",
    "bearer_token",
    "call_route",
    "create_sandbox_app",
    "drop_connection",
    "fault_arg",
    "fault_mix_arg",
    "fault_settings",
    "fault_view",
    "guarded",
    "iso_millis",
    "json_body",
    "json_response",
    "next_fault",
    "parse_fault",
    "parse_fault_mix",
    "queue_faults",
    "requests_by_status",
    "run_sandbox",
    "sandbox_parser",
    "serve_until_stopped",
    "start_app",
]

RANDOM_FAULT_CHOICES: tuple[int | str, ...] = (500, 502, 503, "drop")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------
# JSON in and out
# --------------------------------------------------------------------------


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None, content_type: str = "application/json"
) -> web.Response:
    """``web.json_response`` with orjson: the same status, headers and JSON, at a fraction of the CPU.

    The body is compact UTF-8 (the stdlib's is spaced and ASCII-escaped);
    ``Content-Type`` is the same ``<type>; charset=utf-8``. A value orjson
    cannot write (an integer beyond 64 bits) is written by the stdlib.
    """
    try:
        body = orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError
        body = json.dumps(data).encode("utf-8")
    return web.Response(body=body, status=status, headers=headers, content_type=content_type, charset="utf-8")


async def json_body(request: web.Request) -> Any:
    """``await request.json()``, parsed by orjson when it can.

    Anything orjson refuses (not UTF-8, NaN, an integer beyond 64 bits, a
    lone surrogate, very deep nesting) is parsed again the stdlib's way, so
    what is accepted, and the error raised for what is not, stay exactly as
    ``request.json()`` has them.
    """
    raw = await request.read()
    charset = request.charset
    if charset is None or charset.lower() in ("utf-8", "utf8"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw.decode(charset or "utf-8"))


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected failure, modelled on what real infrastructure does.

    ``status`` imitates an error page from the vendor or its gateway, ``drop``
    imitates a connection reset before the request is processed,
    ``drop-after`` imitates a response lost *after* the write happened (the
    case that turns a client retry into a duplicate), ``garbage`` imitates a
    proxy answering ``200`` with a page of its own after the write happened
    (a success that proves nothing), and ``delay`` imitates a slow upstream
    so client timeouts can be tested.
    """

    kind: str
    status: int | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        """Render the fault in the same spelling ``parse_fault`` accepts."""
        if self.kind == "status":
            return str(self.status)
        if self.kind == "delay":
            return f"delay:{self.seconds:g}"
        return self.kind


def parse_fault(spec: int | str) -> Fault:
    """Turn ``503``, ``"503"``, ``"drop"``, ``"drop-after"``, ``"garbage"`` or ``"delay:1.5"`` into a Fault."""
    if isinstance(spec, bool):
        raise ValueError(f"invalid fault {spec!r}")
    if isinstance(spec, int):
        return _status_fault(spec)
    if not isinstance(spec, str):
        raise ValueError(f"invalid fault {spec!r}")
    text = spec.strip().lower()
    if text in ("drop", "drop-after", "garbage"):
        return Fault(kind=text)
    if text.startswith("delay:"):
        return _delay_fault(text.partition(":")[2], spec)
    if text.isdigit():
        return _status_fault(int(text))
    raise ValueError(f"invalid fault {spec!r}: use a status code, 'drop', 'drop-after', 'garbage' or 'delay:<seconds>'")


def _status_fault(status: int) -> Fault:
    if not 400 <= status <= 599:
        raise ValueError(f"fault status must be 4xx or 5xx, got {status}")
    return Fault(kind="status", status=status)


def _delay_fault(value: str, spec: str) -> Fault:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"invalid delay in fault {spec!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"delay must be a non-negative number of seconds in {spec!r}")
    return Fault(kind="delay", seconds=seconds)


class FaultTarget(Protocol):
    """The part of a sandbox state that faults are queued on and drawn from."""

    faults: deque[Fault]
    fault_rate: float
    rng: random.Random


def next_fault(state: FaultTarget) -> Fault | None:
    """Queued faults first, in order; then a seeded draw from the fault mix, then from ``fault_rate``."""
    if state.faults:
        return state.faults.popleft()
    mix: list[tuple[Fault, float]] = getattr(state, "fault_mix", None) or []
    if mix:
        draw = state.rng.random()
        for fault, share in mix:
            if draw < share:
                return fault
            draw -= share
    if state.fault_rate > 0 and state.rng.random() < state.fault_rate:
        return parse_fault(state.rng.choice(RANDOM_FAULT_CHOICES))
    return None


class FaultedState:
    """The fault bookkeeping a sandbox state starts with and goes back to on reset.

    A subclass sets ``config`` (carrying ``fault_rate`` and ``fault_seed``) and
    ``initial_faults`` before it calls :meth:`reset_faults`.
    """

    config: Any
    initial_faults: list[Fault]

    def reset_faults(self) -> None:
        """The start-up queue, rate and seed again, so a reset run draws the same faults."""
        self.faults: deque[Fault] = deque(self.initial_faults)
        self.fault_rate: float = self.config.fault_rate
        self.rng = random.Random(self.config.fault_seed)

    def next_fault(self) -> Fault | None:
        """Queued faults first, in order; then a seeded random draw."""
        return next_fault(self)


def fault_view(state: FaultTarget) -> dict[str, Any]:
    """The fault part of a ``/_sandbox/state`` snapshot."""
    return {"pending_faults": [fault.describe() for fault in state.faults], "fault_rate": state.fault_rate}


def requests_by_status(statuses: list[int | str]) -> dict[str, int]:
    """How many API answers had each status (``"drop"`` for a dropped connection)."""
    return {str(k): v for k, v in Counter(statuses).items()}


def parse_fault_mix(spec: str | Mapping[str, Any]) -> list[tuple[Fault, float]]:
    """``"garbage=0.2,503=0.05,drop=0.05"`` (or the same as a mapping): each request draws one of them.

    The shares are probabilities per API request; they may add up to 1 at most.
    """
    if isinstance(spec, str):
        pairs: list[tuple[str, Any]] = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, share = part.partition("=")
            if not sep:
                raise ValueError(f"invalid fault mix entry {part!r}: use FAULT=SHARE, e.g. garbage=0.2")
            pairs.append((name, share))
    elif isinstance(spec, Mapping):
        pairs = [(str(k), v) for k, v in spec.items()]
    else:
        raise ValueError("fault_mix must be a mapping of fault to share")
    mix = []
    for name, share in pairs:
        try:
            value = float(share)
        except (TypeError, ValueError):
            raise ValueError(f"invalid share {share!r} for fault {name!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"the share of fault {name!r} must be between 0 and 1, got {share}")
        mix.append((parse_fault(name), value))
    if sum(share for _, share in mix) > 1.0 + 1e-9:
        raise ValueError("the shares of a fault mix add up to more than 1")
    return mix


def queue_faults(state: FaultTarget, body: Mapping[str, Any]) -> None:
    """Validate every fault before queuing any, so a typo queues nothing."""
    specs = body.get("faults", [])
    if not isinstance(specs, list):
        raise ValueError("faults must be a list")
    parsed = [parse_fault(spec) for spec in specs]
    mix = parse_fault_mix(body["fault_mix"]) if "fault_mix" in body else None
    if body.get("clear"):
        state.faults.clear()
    state.faults.extend(parsed)
    if "fault_rate" in body:
        rate = float(body["fault_rate"])
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        state.fault_rate = rate
    if "fault_seed" in body:
        state.rng = random.Random(body["fault_seed"])
    if mix is not None:
        state.fault_mix = mix  # type: ignore[attr-defined]


def admin_faults_handler(get_state: Callable[[web.Request], FaultTarget]) -> Handler:
    """``POST /_sandbox/faults``: ``{"faults": [...], "clear"?, "fault_rate"?, "fault_seed"?, "fault_mix"?}``."""

    async def handler(request: web.Request) -> web.Response:
        state = get_state(request)
        try:
            body = await json_body(request)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            queue_faults(state, body)
        except (ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"pending_faults": [fault.describe() for fault in state.faults]})

    return handler


# What a misconfigured proxy or captive portal answers in place of the API.
GARBAGE_PAGE = "<html><head><title>OK</title></head><body>Request accepted.</body></html>"


def garbage_response() -> web.Response:
    return web.Response(status=200, text=GARBAGE_PAGE, content_type="text/html")


def drop_connection(request: web.Request) -> None:
    """Close the socket so the client sees a disconnect instead of a response."""
    if request.transport is not None:
        request.transport.close()


async def apply_fault(
    request: web.Request, call: Handler, state: FaultTarget, fault_response: Callable[[int], web.StreamResponse]
) -> web.StreamResponse | None:
    """Answer the request, honouring the next fault; None means the connection was dropped.

    ``call`` runs the real route; ``fault_response`` renders an injected error
    status in the vendor's own error format.
    """
    fault = next_fault(state)
    if fault is None:
        return await call(request)
    if fault.kind == "status":
        return fault_response(fault.status or 500)
    if fault.kind == "drop":
        drop_connection(request)
        return None
    if fault.kind == "delay":
        await asyncio.sleep(fault.seconds)
        return await call(request)
    if fault.kind == "garbage":
        await call(request)  # the write happens; the answer is a page that proves nothing
        return garbage_response()
    await call(request)  # drop-after: the write happens, the answer is lost
    drop_connection(request)
    return None


# --------------------------------------------------------------------------
# Quota
# --------------------------------------------------------------------------


class EmailIndex:
    """Record ids by lower-cased email.

    A fake's duplicate-email check and its lookup by email run on every
    upsert; scanning every stored record made a sandbox with a few thousand
    records cost milliseconds a request, so a demo or benchmark measured the
    sandbox instead of the engine. Callers keep it in step with their records:
    ``drop`` the old emails before a change, ``add`` the new ones after.
    """

    def __init__(self) -> None:
        self._ids: dict[str, set[Any]] = {}

    def add(self, record_id: Any, emails: Any) -> None:
        for email in emails:
            self._ids.setdefault(email, set()).add(record_id)

    def drop(self, record_id: Any, emails: Any) -> None:
        for email in emails:
            holders = self._ids.get(email)
            if holders is not None:
                holders.discard(record_id)
                if not holders:
                    del self._ids[email]

    def holders(self, emails: Any) -> set[Any]:
        """Every record holding one of these (already lower-cased) emails."""
        found: set[Any] = set()
        for email in emails:
            found |= self._ids.get(email, set())
        return found


@dataclass
class FixedWindowQuota:
    """A request budget that refills all at once when its window ends.

    The window starts with the first request after the previous one ended,
    so ``reset_epoch`` is a real future instant a client can wait for. With
    ``aligned`` the windows are instead whole multiples of ``window`` on the
    clock (calendar minutes for a 60 s window).
    """

    quota: int
    window: float
    window_end: float = 0.0
    used: int = 0
    aligned: bool = False
    # Closed windows as (start, end, requests accepted), for measuring how much of the quota a client used.
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def _roll(self, now: float) -> None:
        if now >= self.window_end:
            if self.window_end:
                self.history.append((self.window_end - self.window, self.window_end, min(self.used, self.quota)))
                del self.history[:-1000]
            self.window_end = (math.floor(now / self.window) + 1) * self.window if self.aligned else now + self.window
            self.used = 0

    def consume(self, now: float, cost: int = 1) -> bool:
        """Count one request; False means it is over quota and must get a 429."""
        self._roll(now)
        self.used += cost
        return self.used <= self.quota

    def remaining(self) -> int:
        return max(0, self.quota - self.used)

    def reset_epoch(self) -> int:
        return math.ceil(self.window_end)

    def seconds_to_reset(self, now: float) -> int:
        return max(1, math.ceil(self.window_end - now))

    def seconds_to_reset_exact(self, now: float) -> float:
        return max(0.0, self.window_end - now)


# --------------------------------------------------------------------------
# API plumbing: credentials, error rendering, the metered middleware, admin routes
# --------------------------------------------------------------------------


class SandboxError(Exception):
    """An error answer raised by a route or a guard; each vendor renders it in its own format."""

    status: int

    def response(self) -> web.Response:
        raise NotImplementedError


class JsonError(SandboxError):
    """An error answer whose whole JSON body is given, for vendors without a fixed error envelope."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_response(self.body, status=self.status, headers=self.headers)


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header (scheme case-insensitive), or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def basic_credentials(request: web.Request) -> tuple[str, str, str] | None:
    """An ``Authorization: Basic`` header split at its first colon: (user, colon, password).

    None when there is no Basic header; ``("", "", "")`` when it does not
    decode, so a caller that needs the colon refuses it.
    """
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", "", ""


def guarded(check: Callable[[web.Request], None]) -> Callable[[Handler], Handler]:
    """A decorator for API routes: ``check`` the credentials, then render any SandboxError as an answer."""

    def protect(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                check(request)
                return await handler(request)
            except SandboxError as error:
                return error.response()

        return wrapped

    return protect


RouteError = Callable[[web.Request, web.HTTPException], web.StreamResponse]


async def call_route(request: web.Request, handler: Handler, route_error: RouteError) -> web.StreamResponse:
    """Run the route; aiohttp's own answers (no such route, wrong method) go through ``route_error``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return route_error(request, exc)


@dataclass(frozen=True)
class Admission:
    """What a vendor's limits decide about one API request, before any fault or route.

    ``refused`` is the answer given instead of the route (the vendor's 429),
    or None to go on; ``fault_response`` renders an injected error status in
    the vendor's format; ``headers`` are the rate-limit headers, read when the
    answer is ready so they count this request.
    """

    refused: web.StreamResponse | None
    fault_response: Callable[[int], web.StreamResponse]
    headers: Callable[[], Mapping[str, str]]


def api_middleware(
    prefix: str,
    get_state: Callable[[web.Request], Any],
    admit: Callable[[web.Request, Any], Admission],
    route_error: RouteError,
    *,
    log_requests: bool = True,
    count_in_flight: bool = False,
) -> Middleware:
    """The middleware in front of a vendor's API routes (paths under ``prefix``).

    Limits first (a 429 never reaches the route), then faults, then the
    route; every answer's status is kept in ``state.statuses`` (and, with
    ``log_requests``, the request in ``state.requests``), and the answer
    carries the rate-limit headers. ``count_in_flight`` keeps
    ``state.in_flight`` at the number of API requests being answered.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefix):
            return await handler(request)
        state = get_state(request)
        if count_in_flight:
            state.in_flight += 1
        response: web.StreamResponse | None
        try:
            admission = admit(request, state)
            if admission.refused is not None:
                response = admission.refused
            elif state.faults or state.fault_rate > 0 or getattr(state, "fault_mix", None):
                response = await apply_fault(
                    request, lambda r: call_route(r, handler, route_error), state, admission.fault_response
                )
            else:  # no fault can be drawn (none queued, no rate, no mix): the route, without the fault machinery
                response = await call_route(request, handler, route_error)
        finally:
            if count_in_flight:
                state.in_flight -= 1
        status: int | str = "drop" if response is None else response.status
        state.statuses.append(status)
        if log_requests:
            state.requests.append(
                {"method": request.method, "path": request.path, "query": request.query_string, "status": status}
            )
        if response is None:
            return web.Response()  # written to a closed transport; nobody receives it
        response.headers.update(admission.headers())
        return response

    return middleware


def create_sandbox_app(key: web.AppKey[Any], state: Any, middleware: Middleware) -> web.Application:
    """An app holding ``state`` under ``key``, its API behind ``middleware``, with the admin routes.

    The admin routes take no credentials (they are for tests and demos):
    ``GET /_sandbox/state`` (the state's ``snapshot()``), ``POST
    /_sandbox/faults`` and ``POST /_sandbox/reset`` (its ``reset()``, then the
    snapshot).
    """
    app = web.Application(middlewares=[middleware])
    app[key] = state

    def get_state(request: web.Request) -> Any:
        return request.app[key]

    async def admin_state(request: web.Request) -> web.Response:
        return json_response(get_state(request).snapshot())

    async def admin_reset(request: web.Request) -> web.Response:
        state = get_state(request)
        state.reset()
        return json_response(state.snapshot())

    app.router.add_get("/_sandbox/state", admin_state)
    app.router.add_post("/_sandbox/faults", admin_faults_handler(get_state))
    app.router.add_post("/_sandbox/reset", admin_reset)
    return app


# --------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxDemo:
    """A sandbox made ready for ``signal-engine demo``, which knows no vendor.

    The sandbox knows what the demo must not: the built-in ``preset`` that
    delivers to it, the ``settings`` with which that preset reaches it (from
    the URL it was bound to), and what it holds afterwards, said for a person
    (``holdings``: a headline, then one line per record) and as ``counts``
    for a log shipper.
    """

    preset: str
    app: web.Application
    settings: Callable[[str], dict[str, str]]
    holdings: Callable[[], list[str]]
    counts: Callable[[], dict[str, Any]]


# --------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------


def iso_millis(now: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds and ``Z`` (``2024-05-01T12:00:00.123Z``)."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    if moment.year < 1000:  # isoformat pads the year to four digits, strftime does not
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"  # without its "+00:00"


def base_url(address: Any) -> str:
    host, port = address[0], address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start_app(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving ``app`` in the running loop; port 0 picks a free port.

    Returns the runner (call ``await runner.cleanup()`` to stop) and the base
    URL, read back from the bound socket so the real port is reported.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, base_url(runner.addresses[0])


async def _wait_for_shutdown() -> None:
    """Sleep until SIGINT/SIGTERM; where signals can't be hooked, Ctrl-C cancels us instead."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    await stop.wait()


async def serve_until_stopped(app: web.Application, host: str, port: int, banner: Callable[[str], str]) -> None:
    """Serve ``app``, print one line naming its URL, and stop cleanly on SIGINT/SIGTERM."""
    runner, url = await start_app(app, host, port)
    try:
        print(banner(url), flush=True)
        await _wait_for_shutdown()
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _checked(parse: Callable[[str], object], value: str) -> str:
    """``value`` itself once ``parse`` accepts it, so argparse reports the parser's own complaint."""
    try:
        parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def fault_arg(value: str) -> str:
    return _checked(parse_fault, value)


def fault_mix_arg(value: str) -> str:
    return _checked(parse_fault_mix, value)


DEFAULT = " (default: %(default)s)"  # appended to an option's help, so --help shows its default


def add_fault_arguments(parser: argparse.ArgumentParser, fault_rate: float, fault_seed: int | None) -> None:
    """The fault options every sandbox takes, with the same spelling and help."""
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=fault_rate,
        help="probability (0 to 1) of a random 500/502/503/drop on each API request" + DEFAULT,
    )
    parser.add_argument(
        "--fault-seed",
        type=int,
        default=fault_seed,
        help="seed of the random faults, to reproduce a run (default: a fresh seed)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        type=fault_arg,
        default=None,
        metavar="FAULT",
        help="a one-shot fault for the next API request: a status (503), drop, drop-after, garbage "
        "or delay:SECONDS; repeat it to queue several (default: none)",
    )


def fault_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ``SandboxConfig`` fields the options of :func:`add_fault_arguments` set."""
    return {"faults": list(args.fault or []), "fault_rate": args.fault_rate, "fault_seed": args.fault_seed}


def add_serve_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """Where the sandbox listens; loopback by default, because it accepts well-known demo credentials."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; keep it loopback" + DEFAULT)
    parser.add_argument("--port", type=int, default=port, help="port to listen on; 0 picks a free one" + DEFAULT)


def sandbox_parser(name: str, port: int, description: str) -> argparse.ArgumentParser:
    """The parser of ``signal-engine sandbox NAME``, starting with where it listens (``port`` by default)."""
    parser = argparse.ArgumentParser(prog=f"signal-engine sandbox {name}", description=description)
    add_serve_arguments(parser, port)
    return parser


def _fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed: a sandbox process then spends a fifth less CPU a request."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_sandbox(
    name: str,
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    make_app: Callable[[argparse.Namespace], web.Application],
    banner: Callable[[argparse.Namespace, str], str],
) -> int:
    """Parse options, build the app (refusing bad numbers before binding a port), serve until Ctrl-C.

    Returns the exit code: 0 after a clean stop, 1 when the port cannot be
    bound, 2 (via argparse) for bad options.
    """
    args = parser.parse_args(argv)
    try:
        app = make_app(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    try:
        with asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:
            runner.run(serve_until_stopped(app, args.host, args.port, lambda url: banner(args, url)))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"{name} sandbox could not listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
