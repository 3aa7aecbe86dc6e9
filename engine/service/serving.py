"""``serve`` and ``worker`` put together: queues, engines, the intake app, signals and draining.

* ``serve PRESET`` (embedded): the intake and one worker in one process,
  the queue in ``<state>/queue.db`` beside the state database.
* ``serve PRESET --redis URL``: the intake alone, appending to the preset's
  Redis Stream, and writing each identify's traits to the shared identity
  memory before it answers (so a lead accepted after it is joined by
  whichever worker takes it).
* ``worker PRESET --redis URL``: one of any number of workers.

SIGTERM or SIGINT drains: the intake answers 503 to new requests and
finishes those under way, the worker reads nothing new and finishes what it
read, every finished event is acknowledged with its outcome, then the
process exits. A worker still busy after ``drain_seconds`` (a delivery waiting
out a rate-limit window) stops anyway: its unacknowledged entries are
claimed by another worker, or re-read by the next ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from ..delivery.transport import AiohttpTransport, HttpRequest, HttpResponse
from ..language.model import Preset
from ..language.settings import Settings
from ..pipeline.identity import IdentityMemory
from ..pipeline.prepare import Pipeline
from ..redaction import Redactor
from ..runtime import Engine
from ..state.identity import IdentityLimits
from .intake import RUNNER_OPTIONS, Intake, IntakeConfig, create_app
from .metrics import Metrics
from .worker import MAX_DELIVERIES, VISIBILITY_SECONDS, Worker, outcome_line

log = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0
Configure = Callable[[Redactor], None]


@dataclass
class ServiceOptions:
    preset: Preset
    settings: Settings
    state: str = ".signal-state"
    redis: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    consumer: str | None = None
    visibility_seconds: float = VISIBILITY_SECONDS
    drain_seconds: float = DRAIN_SECONDS
    metrics_port: int | None = None  # the worker's /metrics; None: not served
    print_outcomes: bool = True
    max_deliveries: int = MAX_DELIVERIES  # then a dead letter, cause poison
    record: bool = True  # the record of recent events the console shows (--no-record: none)
    mount: Callable[[web.Application], None] | None = None  # adds routes beside the intake's (serve --console)


class CountingTransport:
    """The engine's transport, counting the destination's answers for the metrics."""

    def __init__(self, inner: AiohttpTransport, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def send(self, request: HttpRequest) -> HttpResponse:
        response = await self.inner.send(request)
        if not request.authenticated:  # only a token request goes without the preset's credential
            self.metrics.token_responses.labels(str(response.status)).inc()
            return response
        self.metrics.responses.labels(str(response.status)).inc()
        if response.status == 429:
            self.metrics.limited.inc()
        return response


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _emit(record: dict[str, Any]) -> None:
    try:
        sys.stdout.write(outcome_line(record) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass  # nobody reads stdout any more; the outcome is in the queue's record


@contextlib.contextmanager
def _signals(stop: asyncio.Event) -> Any:
    loop = asyncio.get_running_loop()
    hooked = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            hooked.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for signum in hooked:
            loop.remove_signal_handler(signum)


async def _engine(options: ServiceOptions, metrics: Metrics, state: Any) -> tuple[Engine, aiohttp.ClientSession]:
    delivery = options.preset.delivery
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=delivery.timeout_seconds),
                                    raise_for_status=False)
    transport = CountingTransport(AiohttpTransport(session, delivery.timeout_seconds, delivery.max_response_bytes),
                                  metrics)
    engine = Engine(options.preset, options.settings, state=state, transport=transport, record=options.record)
    return engine, session


async def _start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **RUNNER_OPTIONS)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def _drain(worker_task: "asyncio.Future[None]", seconds: float, what: str) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(worker_task), seconds)
    except asyncio.TimeoutError:
        log.warning("%s: still busy after %gs of draining; stopping (unfinished events stay queued)", what, seconds)
        worker_task.cancel()
        await asyncio.gather(worker_task, return_exceptions=True)


async def serve(options: ServiceOptions, configure: Configure, *,
                ready: Callable[[str], None] | None = None) -> int:
    """Run the intake (and, without Redis, the worker) until SIGTERM or SIGINT; the exit status."""
    metrics = Metrics()
    stop = asyncio.Event()
    say = ready or (lambda url: print(f"listening on {url}", flush=True))
    if options.redis is None:
        return await _serve_embedded(options, configure, metrics, stop, say)
    return await _serve_redis(options, configure, metrics, stop, say)


def _intake_app(intake: Intake, options: ServiceOptions) -> web.Application:
    app = create_app(intake)
    if options.mount is not None:
        options.mount(app)
    return app


def _intake_redactor(options: ServiceOptions) -> Redactor:
    redactor = Redactor(options.settings.secrets())
    for key in options.intake.write_keys:
        redactor.add(key)
    redactor.add(options.intake.signing_secret)
    return redactor


async def _serve_embedded(options: ServiceOptions, configure: Configure, metrics: Metrics, stop: asyncio.Event,
                          say: Callable[[str], None]) -> int:
    from ..state.sqlite.queue import SqliteQueue

    queue = SqliteQueue(options.state)
    try:
        engine, session = await _engine(options, metrics, options.state)
        for secret in (*options.intake.write_keys, options.intake.signing_secret):
            engine.redactor.add(secret)
        configure(engine.redactor)
        worker = Worker(engine, queue, "embedded", metrics=metrics,
                        emit=_emit if options.print_outcomes else None,
                        visibility_seconds=options.visibility_seconds, max_deliveries=options.max_deliveries)
        intake = Intake(queue, options.intake, metrics)
        _gauges(metrics, queue, engine)
        worker_stop = asyncio.Event()
        with _signals(stop):
            runner, port = await _start_site(_intake_app(intake, options), options.host, options.port)
            try:
                async with engine:
                    worker_task = asyncio.ensure_future(worker.run(worker_stop))
                    say(url_of(options.host, port))
                    await _until(stop, worker_task)
                    intake.draining = True
                    await _bounded(intake.drained(), options.drain_seconds)
                    worker_stop.set()
                    await _drain(worker_task, options.drain_seconds, "serve")
                    _raise_if_failed(worker_task)
            finally:
                await runner.cleanup()
                await session.close()
    finally:
        await queue.close()
    return 0


async def _serve_redis(options: ServiceOptions, configure: Configure, metrics: Metrics, stop: asyncio.Event,
                       say: Callable[[str], None]) -> int:
    from ..state.redis import RedisState

    assert options.redis is not None
    state = RedisState(options.redis)
    try:
        state.check()
        redactor = _intake_redactor(options)
        configure(redactor)
        preset = options.preset
        store = state.identity(preset.name, IdentityLimits.of(preset.identity))
        pipeline = Pipeline(preset, options.settings, IdentityMemory.for_preset(preset.identity, store))
        queue = state.queue(preset.name)
        intake = Intake(queue, options.intake, metrics, remember=pipeline.learn_identity)
        dead_letters = state.dead_letters()

        async def refresh() -> None:
            metrics.backlog.set(await queue.backlog())
            metrics.dead_letters.set(len(dead_letters))

        metrics.on_scrape(refresh)
        with _signals(stop):
            runner, port = await _start_site(_intake_app(intake, options), options.host, options.port)
            try:
                say(url_of(options.host, port))
                await stop.wait()
                intake.draining = True
                await _bounded(intake.drained(), options.drain_seconds)
            finally:
                await runner.cleanup()
                await queue.close()
    finally:
        state.close()
    return 0


async def work(options: ServiceOptions, configure: Configure, *,
               ready: Callable[[str], None] | None = None) -> int:
    """One worker on the preset's Redis Stream, until SIGTERM or SIGINT; the exit status."""
    from ..state.redis import RedisState

    assert options.redis is not None
    consumer = options.consumer or default_consumer()
    metrics = Metrics()
    stop = asyncio.Event()
    # The intake writes identity (serve --redis): a worker only reads it.
    state = RedisState(options.redis, identity_writes=False)
    try:
        state.check()
        aclient = state.async_client()
        queue = state.queue(options.preset.name, aclient)
        locks = state.locks(aclient, f"{consumer}:{os.urandom(6).hex()}", options.visibility_seconds)
        engine, session = await _engine(options, metrics, state)
        configure(engine.redactor)
        worker = Worker(engine, queue, consumer, metrics=metrics, locks=locks,
                        lock_name=lambda key: state.keys.in_flight(options.preset.name, key),
                        emit=_emit if options.print_outcomes else None,
                        visibility_seconds=options.visibility_seconds, max_deliveries=options.max_deliveries)
        _gauges(metrics, queue, engine)
        runner = None
        worker_stop = asyncio.Event()
        with _signals(stop):
            try:
                async with engine:
                    if options.metrics_port is not None:
                        runner, port = await _start_site(_metrics_app(metrics, worker_stop), options.host,
                                                         options.metrics_port)
                        print(f"metrics on {url_of(options.host, port)}/metrics", flush=True)
                    worker_task = asyncio.ensure_future(worker.run(worker_stop))
                    (ready or (lambda name: print(f"worker {name} consuming {options.preset.name}", flush=True)))(consumer)
                    await _until(stop, worker_task)
                    worker_stop.set()
                    await _drain(worker_task, options.drain_seconds, f"worker {consumer}")
                    _raise_if_failed(worker_task)
            finally:
                if runner is not None:
                    await runner.cleanup()
                await session.close()
                await queue.close()
    finally:
        state.close()
    return 0


def _gauges(metrics: Metrics, queue: Any, engine: Engine) -> None:
    async def refresh() -> None:
        metrics.backlog.set(await queue.backlog())
        metrics.dead_letters.set(engine.dead_letters.count(engine.preset.name))  # counted, never loaded

    metrics.on_scrape(refresh)


def _metrics_app(metrics: Metrics, stopping: asyncio.Event) -> web.Application:
    async def page(_: web.Request) -> web.Response:
        body, content_type = await metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if stopping.is_set():
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def _until(stop: asyncio.Event, task: "asyncio.Future[None]") -> None:
    """Until a signal, or the worker ended on its own (an error)."""
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _bounded(waiting: Awaitable[Any], seconds: float) -> None:
    try:
        await asyncio.wait_for(waiting, seconds)
    except asyncio.TimeoutError:
        pass


def _raise_if_failed(task: "asyncio.Future[None]") -> None:
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


async def tail(url: str, preset: str, *, follow: bool = True, last: int = 10,
               out: Callable[[str], None] = print, stop: asyncio.Event | None = None) -> int:
    """Print the preset's outcome stream: the ``last`` outcomes, then new ones as they come (``follow``)."""
    from ..state.redis import RedisState

    state = RedisState(url)
    try:
        state.check()
        client = state.async_client()
        stream = state.keys.outcomes(preset)
        stop = stop or asyncio.Event()
        try:
            with _signals(stop):
                recent = await client.xrevrange(stream, count=max(0, last)) if last > 0 else []
                cursor = recent[0][0] if recent else "$"
                if not recent and last > 0:
                    latest = await client.xrevrange(stream, count=1)
                    cursor = latest[0][0] if latest else "0-0"
                for _, fields in reversed(recent):
                    out(fields[b"outcome"].decode("utf-8", "surrogatepass"))
                while follow and not stop.is_set():
                    answer = await client.xread({stream: cursor}, block=500, count=500)
                    for _, items in answer or []:
                        for entry_id, fields in items:
                            cursor = entry_id
                            out(fields[b"outcome"].decode("utf-8", "surrogatepass"))
        finally:
            await client.aclose()
    finally:
        state.close()
    return 0


__all__ = ["ServiceOptions", "serve", "work", "tail", "url_of", "json"]
