"""``serve`` and ``worker`` put together: queues, engines, the intake app, signals and draining.

Both take an :class:`~engine.service.integrations.IntegrationsConfig`: one
intake feeds every integration named there, each delivered by an engine of
its own (its session, journal, dead letters, token, rate budget and
retries), so one integration's failures only grow its own lag.

* ``serve --config FILE`` (embedded): the intake and a worker per enabled
  integration in one process, the queue in ``<state>/queue.db`` beside the
  state database (each event stored once, a row per integration).
* ``serve --config FILE --redis URL``: the intake alone, appending to one
  Redis Stream with a consumer group per integration, and writing each
  identify's traits to the shared identity memory before it answers (so a
  lead accepted after it is joined by whichever worker takes it).
* ``worker --config FILE --redis URL [--integration NAME ...]``: one of any
  number of workers, for every enabled integration or the ones named.

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
import functools
import inspect
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from ..delivery.transport import AiohttpTransport, HttpRequest, HttpResponse
from ..pipeline.identity import IdentityMemory
from ..pipeline.prepare import Pipeline
from ..redaction import Redactor
from ..runtime import Engine
from ..state.identity import SHARED_IDENTITY, IdentityLimits
from ..state.record import RecordLimits
from .intake import RUNNER_OPTIONS, Intake, IntakeConfig, create_app
from .integrations import Integration, IntegrationsConfig
from .metrics import Metrics
from .worker import MAX_DELIVERIES, VISIBILITY_SECONDS, Worker, outcome_line

log = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0
TRIM_SECONDS = 0.5  # how often a worker trims the stream of entries every integration is done with
Configure = Callable[[Redactor], None]


@dataclass
class ServiceOptions:
    config: IntegrationsConfig
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
    # The record of recent events the console shows: its bounds (RecordLimits), the defaults (True) or none.
    record: bool | RecordLimits = True
    mount: Callable[[web.Application], None] | None = None  # adds routes beside the intake's (serve --console)
    only: list[str] | None = None  # worker --integration NAME ...: these integrations only
    # Where "listening on URL" and the like go: stderr, so stdout holds outcome lines only.
    announce: Callable[..., None] = field(default=lambda line, **fields: _announce(line))

    def working(self) -> list[Integration]:
        """The integrations this process delivers for: the enabled ones (of ``only``, when named)."""
        return [i for i in self.config.enabled() if self.only is None or i.name in self.only]


@dataclass
class _Delivery:
    """One integration at work in this process: its engine, its own HTTP session, its worker."""

    integration: Integration
    engine: Engine
    session: aiohttp.ClientSession
    worker: Worker | None = None


class _AllRedactors:
    """Log lines pass every integration's redactor (they grow as tokens are minted) and the intake's."""

    def __init__(self, redactors: list[Redactor]) -> None:
        self.redactors = redactors

    def redact(self, value: Any) -> Any:
        for redactor in self.redactors:
            value = redactor.redact(value)
        return value


class CountingTransport:
    """The engine's transport, counting the destination's answers for the metrics."""

    def __init__(self, inner: AiohttpTransport, metrics: Metrics, integration: str) -> None:
        self.inner = inner
        self.metrics = metrics
        self.integration = integration

    async def send(self, request: HttpRequest) -> HttpResponse:
        response = await self.inner.send(request)
        if not request.authenticated:  # only a token request goes without the preset's credential
            self.metrics.token_responses.labels(self.integration, str(response.status)).inc()
            return response
        self.metrics.responses.labels(self.integration, str(response.status)).inc()
        if response.status == 429:
            self.metrics.limited.labels(self.integration).inc()
        return response


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _announce(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _emit(record: dict[str, Any]) -> None:
    try:
        sys.stdout.write(outcome_line(record, getattr(sys.stdout, "encoding", None)) + "\n")
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


def _delivery(integration: Integration, metrics: Metrics, state: Any, record: bool | RecordLimits = True) -> _Delivery:
    """An engine of the integration's own: its session (connection pool), journal, dead letters, token and
    rate budget, keyed by its name; identity shared with the other integrations."""
    delivery = integration.preset.delivery
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=delivery.timeout_seconds), raise_for_status=False
    )
    transport = CountingTransport(
        AiohttpTransport(session, delivery.timeout_seconds, delivery.max_response_bytes), metrics, integration.name
    )
    engine = Engine(
        integration.preset,
        integration.settings,
        state=state,
        transport=transport,
        integration=integration.name,
        identity_scope=SHARED_IDENTITY,
        record=record,
    )
    for counter in (metrics.limited, metrics.refreshes):
        counter.labels(integration.name)  # shown at 0 from the start, not only once something happened
    return _Delivery(integration, engine, session)


def _redactor(options: ServiceOptions, deliveries: list[_Delivery]) -> _AllRedactors:
    """Every secret of the file in every integration's redactor too: none shows in another's outcome."""
    secrets = [s for s in (*options.config.secrets(), *options.intake.write_keys, options.intake.signing_secret) if s]
    for delivery in deliveries:
        for secret in secrets:
            delivery.engine.redactor.add(secret)
    return _AllRedactors([Redactor(secrets), *(d.engine.redactor for d in deliveries)])


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


async def _drain(tasks: Sequence[asyncio.Future[None]], seconds: float, what: str) -> None:
    if not tasks:
        return
    _, busy = await asyncio.wait(tasks, timeout=seconds)
    if busy:
        log.warning("%s: still busy after %gs of draining; stopping (unfinished events stay queued)", what, seconds)
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)


async def serve(options: ServiceOptions, configure: Configure, *, ready: Callable[[str], None] | None = None) -> int:
    """Run the intake (and, without Redis, the worker) until SIGTERM or SIGINT; the exit status."""
    metrics = Metrics()
    stop = asyncio.Event()
    say = ready or (lambda url: options.announce(f"listening on {url}", url=url))
    if options.redis is None:
        return await _serve_embedded(options, configure, metrics, stop, say)
    return await _serve_redis(options, configure, metrics, stop, say)


def _intake_app(intake: Intake, options: ServiceOptions) -> web.Application:
    app = create_app(intake)
    if options.mount is not None:
        options.mount(app)
    return app


async def _serve_embedded(
    options: ServiceOptions, configure: Configure, metrics: Metrics, stop: asyncio.Event, say: Callable[[str], None]
) -> int:
    from ..state.backend import open_state
    from ..state.sqlite.queue import SqliteQueue

    config = options.config
    # Every integration named gets its place in the queue, disabled ones too: they resume where they stopped.
    queue = SqliteQueue(options.state, integrations=config.names())
    backend = open_state(options.state)
    deliveries: list[_Delivery] = []
    try:
        deliveries = [_delivery(i, metrics, backend, options.record) for i in options.working()]
        configure(_redactor(options, deliveries))  # type: ignore[arg-type]
        for delivery in deliveries:
            delivery.worker = Worker(
                delivery.engine,
                queue.view(delivery.integration.name),
                "embedded",
                metrics=metrics,
                emit=_emit if options.print_outcomes else None,
                visibility_seconds=options.visibility_seconds,
                max_deliveries=options.max_deliveries,
            )
        intake = Intake(queue, options.intake, metrics)
        _gauges(metrics, queue, config.names(), queue.lag, backend)
        worker_stop = asyncio.Event()
        with _signals(stop):
            runner, port = await _start_site(_intake_app(intake, options), options.host, options.port)
            try:
                async with contextlib.AsyncExitStack() as engines:
                    for delivery in deliveries:
                        await engines.enter_async_context(delivery.engine)
                    tasks = [asyncio.ensure_future(d.worker.run(worker_stop)) for d in deliveries if d.worker]
                    say(url_of(options.host, port))
                    await _until(stop, tasks)
                    intake.draining = True
                    await _bounded(intake.drained(), options.drain_seconds)
                    worker_stop.set()
                    await _drain(tasks, options.drain_seconds, "serve")
                    _raise_if_failed(tasks)
            finally:
                await runner.cleanup()
    finally:
        for delivery in deliveries:
            await delivery.session.close()
        await queue.close()
        backend.close()
    return 0


async def _serve_redis(
    options: ServiceOptions, configure: Configure, metrics: Metrics, stop: asyncio.Event, say: Callable[[str], None]
) -> int:
    from ..state.redis import RedisState
    from ..state.redis.queue import RedisQueue

    assert options.redis is not None
    config = options.config
    state = RedisState(options.redis)
    try:
        state.check()
        redactor = Redactor(
            [s for s in (*config.secrets(), *options.intake.write_keys, options.intake.signing_secret) if s]
        )
        configure(redactor)
        client = state.async_client()
        stream = state.keys.events(config.stream)
        await _align_groups(client, stream, config.names())
        # The intake writes each identify's traits before its 200, so a lead accepted after it is joined by
        # whichever worker of whichever integration takes it. Stored once; each preset keeps its declared traits.
        pipelines = [
            Pipeline(
                i.preset,
                i.settings,
                IdentityMemory.for_preset(
                    i.preset.identity, state.identity(SHARED_IDENTITY, IdentityLimits.of(i.preset.identity))
                ),
            )
            for i in config.integrations
        ]

        def remember(event: Mapping[str, Any]) -> None:
            for pipeline in pipelines:
                pipeline.learn_identity(event)

        queue = RedisQueue(client, stream)
        intake = Intake(queue, options.intake, metrics, remember=remember if pipelines else None)
        lags = {i.name: RedisQueue(client, stream, group=i.name) for i in config.integrations}

        async def lag(name: str) -> int:
            return await lags[name].lag()

        _gauges(metrics, queue, config.names(), lag, state)
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


async def _align_groups(client: Any, stream: str, names: list[str]) -> None:
    """One consumer group per integration named in the file, disabled ones included (they keep their
    position); one created now starts with the next event. A group no integration is named for any more
    is removed, so it holds no events back."""
    from ..state.redis.queue import create_group, groups

    for name in names:
        if await create_group(client, stream, name, "$"):
            log.info("integration %s: starts with the events accepted from now on", name)
    for group in await groups(client, stream):
        if group not in names:
            log.warning("integration %s is no longer configured: its position in the stream is removed", group)
            await client.xgroup_destroy(stream, group)


async def work(options: ServiceOptions, configure: Configure, *, ready: Callable[[str], None] | None = None) -> int:
    """A worker for each integration this process delivers for (on the Redis Stream), until SIGTERM or SIGINT."""
    from ..state.redis import RedisState

    assert options.redis is not None
    consumer = options.consumer or default_consumer()
    metrics = Metrics()
    stop = asyncio.Event()
    config = options.config
    # The intake writes identity (serve --redis): a worker only reads it.
    state = RedisState(options.redis, identity_writes=False)
    deliveries: list[_Delivery] = []
    queues: list[Any] = []
    try:
        state.check()
        stream = state.keys.events(config.stream)
        deliveries = [_delivery(i, metrics, state, options.record) for i in options.working()]
        configure(_redactor(options, deliveries))  # type: ignore[arg-type]
        for delivery in deliveries:
            name = delivery.integration.name
            aclient = state.async_client()
            # A group created here (no intake named it yet) starts with the next event, as one the intake creates.
            queue = state.queue(name, aclient, stream=stream, group=name, start="$", trim_seconds=TRIM_SECONDS)
            queues.append(queue)
            locks = state.locks(aclient, f"{consumer}:{os.urandom(6).hex()}", options.visibility_seconds)
            delivery.worker = Worker(
                delivery.engine,
                queue,
                consumer,
                metrics=metrics,
                locks=locks,
                lock_name=functools.partial(state.keys.in_flight, name),
                emit=_emit if options.print_outcomes else None,
                visibility_seconds=options.visibility_seconds,
                max_deliveries=options.max_deliveries,
            )
        by_name = {d.integration.name: q for d, q in zip(deliveries, queues, strict=True)}

        async def lag(name: str) -> int:
            return await by_name[name].lag()

        _gauges(metrics, None, list(by_name), lag, state)
        runner = None
        worker_stop = asyncio.Event()
        with _signals(stop):
            try:
                async with contextlib.AsyncExitStack() as engines:
                    for delivery in deliveries:
                        await engines.enter_async_context(delivery.engine)
                    if options.metrics_port is not None:
                        runner, port = await _start_site(
                            _metrics_app(metrics, worker_stop), options.host, options.metrics_port
                        )
                        metrics_url = f"{url_of(options.host, port)}/metrics"
                        options.announce(f"metrics on {metrics_url}", url=metrics_url)
                    tasks = [asyncio.ensure_future(d.worker.run(worker_stop)) for d in deliveries if d.worker]
                    names = ", ".join(by_name) or "nothing (no enabled integration)"
                    (
                        ready
                        or (
                            lambda name: options.announce(
                                f"worker {name} consuming {names}", consumer=name, integrations=list(by_name)
                            )
                        )
                    )(consumer)
                    await _until(stop, tasks)
                    worker_stop.set()
                    await _drain(tasks, options.drain_seconds, f"worker {consumer}")
                    _raise_if_failed(tasks)
            finally:
                if runner is not None:
                    await runner.cleanup()
    finally:
        for delivery in deliveries:
            await delivery.session.close()
        for queue in queues:
            await queue.close()
        state.close()
    return 0


def _gauges(metrics: Metrics, queue: Any, names: list[str], lag: Callable[[str], Any], state: Any) -> None:
    """Before each scrape: the stored backlog, and each integration's own lag and dead letters."""

    async def refresh() -> None:
        if queue is not None:
            metrics.backlog.set(await queue.backlog())
        letters = state.dead_letters()
        for name in names:
            value = lag(name)
            metrics.lag.labels(name).set(await value if inspect.isawaitable(value) else value)
            metrics.dead_letters.labels(name).set(letters.count(name))  # counted, never loaded

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


async def _until(stop: asyncio.Event, tasks: Sequence[asyncio.Future[None]]) -> None:
    """Until a signal, or a worker ended on its own (an error)."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _bounded(waiting: Awaitable[Any], seconds: float) -> None:
    try:
        await asyncio.wait_for(waiting, seconds)
    except TimeoutError:
        pass


def _raise_if_failed(tasks: Sequence[asyncio.Future[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def tail(
    url: str,
    integrations: list[str],
    *,
    follow: bool = True,
    last: int = 10,
    out: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> int:
    """Print the integrations' outcome streams: the ``last`` outcomes (of them all, in the order they were
    published), then new ones as they come (``follow``). Each line names its integration."""
    from ..state.redis import RedisState

    state = RedisState(url)
    try:
        state.check()
        client: Any = state.async_client()  # its answers' types depend on the connection's decoding
        streams = [state.keys.outcomes(name) for name in integrations]
        stop = stop or asyncio.Event()
        try:
            with _signals(stop):
                recent: list[tuple[tuple[int, int], str, Any]] = []
                cursors: dict[str, Any] = {}
                for stream in streams:
                    items = await client.xrevrange(stream, count=max(1, last))
                    cursors[stream] = items[0][0] if items else "0-0"
                    if last > 0:
                        recent += [(_stream_id(entry_id), stream, fields[b"outcome"]) for entry_id, fields in items]
                for _, _, text in sorted(recent)[-last:] if last > 0 else []:
                    out(text.decode("utf-8", "surrogatepass"))
                while follow and not stop.is_set():
                    answer = await client.xread(cursors, block=500, count=500)
                    for name, items in answer or []:
                        key = name.decode() if isinstance(name, bytes) else name
                        for entry_id, fields in items:
                            cursors[key] = entry_id
                            out(fields[b"outcome"].decode("utf-8", "surrogatepass"))
        finally:
            await client.aclose()
    finally:
        state.close()
    return 0


def _stream_id(entry_id: Any) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


__all__ = ["ServiceOptions", "json", "serve", "tail", "url_of", "work"]
