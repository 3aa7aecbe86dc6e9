"""What every local vendor fake shares: injected faults, a fixed-window quota, serving.

Each sandbox imitates one vendor's API (auth, bodies, errors, rate-limit
headers). What real infrastructure does to *any* API — error pages, dropped
connections, slow answers — and how a fake is started, stopped and driven by
tests are the same for all of them, so they live here once.

A sandbox state object that wants faults carries three attributes:
``faults`` (a deque of :class:`Fault`), ``fault_rate`` and ``rng``; one that
also carries ``fault_mix`` (see :func:`parse_fault_mix`) draws from it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol

from aiohttp import web

__all__ = [
    "Fault",
    "FaultTarget",
    "FixedWindowQuota",
    "RANDOM_FAULT_CHOICES",
    "add_admin_routes",
    "add_fault_arguments",
    "add_serve_arguments",
    "DEFAULT",
    "admin_faults_handler",
    "apply_fault",
    "base_url",
    "drop_connection",
    "fault_arg",
    "fault_mix_arg",
    "next_fault",
    "parse_fault",
    "parse_fault_mix",
    "queue_faults",
    "record_answer",
    "run_sandbox",
    "serve_until_stopped",
    "start_app",
]

RANDOM_FAULT_CHOICES: tuple[int | str, ...] = (500, 502, 503, "drop")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            queue_faults(state, body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"pending_faults": [fault.describe() for fault in state.faults]})

    return handler


class AdminTarget(FaultTarget, Protocol):
    """A sandbox state the admin endpoints drive: it can show itself and start over."""

    def snapshot(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


def add_admin_routes(app: web.Application, get_state: Callable[[web.Request], AdminTarget]) -> None:
    """``GET /_sandbox/state``, ``POST /_sandbox/faults`` and ``POST /_sandbox/reset``, alike in every fake.

    State is what the fake holds and every answer it gave; reset goes back to
    the start-up state (its faults included) and answers with the new state.
    """

    async def state(request: web.Request) -> web.Response:
        return web.json_response(get_state(request).snapshot())

    async def reset(request: web.Request) -> web.Response:
        target = get_state(request)
        target.reset()
        return web.json_response(target.snapshot())

    app.router.add_get("/_sandbox/state", state)
    app.router.add_post("/_sandbox/faults", admin_faults_handler(get_state))
    app.router.add_post("/_sandbox/reset", reset)


class AnswerLog(Protocol):
    statuses: list[int | str]
    requests: list[dict[str, Any]]


def record_answer(state: AnswerLog, request: web.Request, response: web.StreamResponse | None) -> None:
    """Log an API answer for the tests (``"drop"`` when the connection was dropped instead)."""
    status: int | str = "drop" if response is None else response.status
    state.statuses.append(status)
    state.requests.append({"method": request.method, "path": request.path, "query": request.query_string,
                           "status": status})


# What a misconfigured proxy or captive portal answers in place of the API.
GARBAGE_PAGE = "<html><head><title>OK</title></head><body>Request accepted.</body></html>"


def garbage_response() -> web.Response:
    return web.Response(status=200, text=GARBAGE_PAGE, content_type="text/html")


def drop_connection(request: web.Request) -> None:
    """Close the socket so the client sees a disconnect instead of a response."""
    if request.transport is not None:
        request.transport.close()


async def apply_fault(request: web.Request, call: Handler, state: FaultTarget,
                      fault_response: Callable[[int], web.StreamResponse]) -> web.StreamResponse | None:
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
# Serving
# --------------------------------------------------------------------------


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


def fault_arg(value: str) -> str:
    try:
        parse_fault(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def fault_mix_arg(value: str) -> str:
    try:
        parse_fault_mix(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


DEFAULT = " (default: %(default)s)"  # appended to an option's help, so --help shows its default


def add_fault_arguments(parser: argparse.ArgumentParser, fault_rate: float, fault_seed: int | None) -> None:
    """The fault options every sandbox takes, with the same spelling and help."""
    parser.add_argument("--fault-rate", type=float, default=fault_rate,
                        help="probability (0 to 1) of a random 500/502/503/drop on each API request" + DEFAULT)
    parser.add_argument("--fault-seed", type=int, default=fault_seed,
                        help="seed of the random faults, to reproduce a run (default: a fresh seed)")
    parser.add_argument("--fault", action="append", type=fault_arg, default=None, metavar="FAULT",
                        help="a one-shot fault for the next API request: a status (503), drop, drop-after, garbage "
                             "or delay:SECONDS; repeat it to queue several (default: none)")


def add_serve_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """Where the sandbox listens; loopback by default, because it accepts well-known demo credentials."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; keep it loopback" + DEFAULT)
    parser.add_argument("--port", type=int, default=port, help="port to listen on; 0 picks a free one" + DEFAULT)


def run_sandbox(name: str, parser: argparse.ArgumentParser, argv: list[str] | None,
                make_app: Callable[[argparse.Namespace], web.Application],
                banner: Callable[[argparse.Namespace, str], str]) -> int:
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
        asyncio.run(serve_until_stopped(app, args.host, args.port, lambda url: banner(args, url)))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"{name} sandbox could not listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
