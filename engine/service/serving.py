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
import dataclasses
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
from ..loggers import package_logger
from ..pipeline.identity import IdentityMemory
from ..pipeline.prepare import Pipeline
from ..redaction import Redactor
from ..runtime import Engine
from ..state.identity import SHARED_IDENTITY, IdentityLimits
from ..state.record import RecordLimits
from .console_made import load_console_made, stored_in
from .intake import RUNNER_OPTIONS, Intake, IntakeConfig, create_app
from .integrations import Integration, IntegrationsConfig, IntegrationsError
from .metrics import Metrics
from .worker import MAX_DELIVERIES, VISIBILITY_SECONDS, Worker, outcome_line

log = package_logger(__name__)

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
    # Also deliver the integrations set up in the console (kept in the same state store; read at start).
    console_made: bool = True
    environ: Mapping[str, str] | None = None  # where SIGNAL_CONSOLE_SECRET_KEY is read; None: os.environ
    preset_path: Sequence[str] = ()  # where a console-made integration's preset is looked for, beside the built-ins
    # Console-made integrations skipped at start (no key, a preset gone): not delivered, but their place in the
    # queue is kept, as a disabled one's is (set by with_console_made).
    resting: Sequence[str] = ()
    # serve --console (embedded): given the function the console calls when an integration set up in it is saved
    # or deleted, so this serve starts, restarts or stops delivering it at once (what it did, in one line).
    watch: Callable[[Callable[[str], Awaitable[str]]], None] | None = None
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
        self._responses: dict[int, Any] = {}  # status -> its counter: labels() once per status, not per request

    async def send(self, request: HttpRequest) -> HttpResponse:
        response = await self.inner.send(request)
        if not request.authenticated:  # only a token request goes without the preset's credential
            self.metrics.token_responses.labels(self.integration, str(response.status)).inc()
            return response
        counter = self._responses.get(response.status)
        if counter is None:
            counter = self._responses[response.status] = self.metrics.responses.labels(
                self.integration, str(response.status)
            )
        counter.inc()
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


def with_console_made(
    options: ServiceOptions, backend: Any, *, secrets: bool = True
) -> tuple[ServiceOptions, list[str]]:
    """``options`` with the state's console-made integrations after the file's, and a line for each one skipped.

    ``secrets=False`` for the Redis intake: it names every integration (its
    consumer group) and learns identity, so it needs neither their credentials
    nor the key.
    """
    if not options.console_made:
        return options, []
    try:
        stored = stored_in(backend)
    except (ValueError, KeyError, OSError) as exc:  # a damaged row: the file's integrations are still delivered
        return options, [
            f"the integrations set up in the console cannot be read ({type(exc).__name__}); none is delivered"
        ]
    made = load_console_made(
        stored,
        os.environ if options.environ is None else options.environ,
        taken=options.config.names(),
        preset_path=options.preset_path,
        secrets=secrets,
    )
    if made.integrations:
        config = dataclasses.replace(options.config, integrations=[*options.config.integrations, *made.integrations])
        options = dataclasses.replace(options, config=config)
    if made.resting:
        options = dataclasses.replace(options, resting=[*options.resting, *made.resting])
    if options.only is not None:
        unknown = [name for name in options.only if name not in options.config.names()]
        if unknown:
            raise IntegrationsError(
                [
                    f"--integration {name}: no such integration (the file names: {', '.join(options.config.names())})"
                    for name in unknown
                ]
            )
    return options, made.skipped


_NO_INTEGRATION = IntegrationsConfig([])


def nothing_configured(options: ServiceOptions) -> bool:
    """No integration at all: no file, no PRESET, none set up in the console (not even one skipped)."""
    return not options.config.integrations and not options.resting


NOTHING_TO_DELIVER = (
    "nothing to deliver: no PRESET, no --config FILE, and no integration set up in the console in this state store"
)


def _refuse_or_wait(options: ServiceOptions, intake: Intake) -> bool:
    """With nothing configured: an error, unless the console is served (to set up the first integration); then
    every event is refused (503) until the next start, and True (the caller says so once it listens)."""
    if not nothing_configured(options):
        return False
    if options.mount is None:
        raise IntegrationsError(
            [f"{NOTHING_TO_DELIVER}; name a PRESET, pass --config FILE, or add --console to set one up in the browser"]
        )
    intake.refusing = "no integration is set up yet, so no event is taken; set one up in the console" + (
        "" if options.watch is not None else ", then restart serve"
    )
    return True


def _say_nothing_yet(url: str, *, live: bool = False) -> None:
    then = (
        "it is delivered as soon as it is saved (until then every event is refused, 503)"
        if live
        else "then restart serve (until then every event is refused, 503)"
    )
    log.warning(
        "warning: nothing to deliver yet: no PRESET, no --config FILE, and no integration set up in the console; "
        "set one up at %s/console/integrations/new; %s",
        url,
        then,
    )


def _say_skipped(lines: list[str]) -> None:
    for line in lines:
        log.warning("warning: %s", line)


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

    backend = open_state(options.state)
    given = set(options.config.names())  # the file's (or PRESET's): the console never changes these
    try:
        options, skipped = with_console_made(options, backend)
    except BaseException:
        backend.close()
        raise
    config = options.config
    # Every integration named gets its place in the queue, disabled ones too: they resume where they stopped.
    queue = SqliteQueue(options.state, integrations=[*config.names(), *options.resting])
    deliveries: list[_Delivery] = []
    running: _Running | None = None
    try:
        deliveries = [_delivery(i, metrics, backend, options.record) for i in options.working()]
        redactors = _redactor(options, deliveries)
        configure(redactors)  # type: ignore[arg-type]
        _say_skipped(skipped)
        intake = Intake(queue, options.intake, metrics)
        waiting = _refuse_or_wait(options, intake)
        names = [*config.names(), *options.resting]
        _gauges(metrics, queue, names, queue.lag, backend)
        running = _Running(options, backend, queue, metrics, intake, redactors, names, given)
        if options.watch is not None:
            options.watch(running.changed)
        with _signals(stop):
            runner, port = await _start_site(_intake_app(intake, options), options.host, options.port)
            try:
                for delivery in deliveries:
                    await running.start(delivery)
                say(url_of(options.host, port))
                if waiting:
                    _say_nothing_yet(url_of(options.host, port), live=options.watch is not None)
                failed: asyncio.Future[Any] = asyncio.ensure_future(running.failed.wait())
                try:
                    await _until(stop, [failed])
                finally:
                    failed.cancel()
                intake.draining = True
                await _bounded(intake.drained(), options.drain_seconds)
                await running.stop_all(options.drain_seconds)
            finally:
                await runner.cleanup()
    finally:
        if running is not None:
            await running.close()
        for delivery in deliveries:
            await delivery.session.close()
        await queue.close()
        backend.close()
    return 0


class _Running:
    """The deliveries of an embedded ``serve``, each started and stopped on its own.

    Why on its own: with the console mounted (``serve --console``), an
    integration set up there is delivered from the moment it is saved, an
    edit restarts it with its new settings, and a delete stops it
    (:meth:`changed`), while the others go on. Each edit or delete drains
    that integration's worker as SIGTERM does (bounded by ``drain_seconds``):
    what it read is finished and acknowledged; what it had not read stays
    queued for the restarted one.
    """

    def __init__(
        self,
        options: ServiceOptions,
        backend: Any,
        queue: Any,
        metrics: Metrics,
        intake: Intake,
        redactors: _AllRedactors,
        names: list[str],
        given: set[str],
    ) -> None:
        self.options = options
        self.backend = backend
        self.queue = queue
        self.metrics = metrics
        self.intake = intake
        self.redactors = redactors
        self.names = names  # the gauges' list: changed in place
        self.given = given
        self.deliveries: dict[str, _Delivery] = {}
        self.tasks: dict[str, asyncio.Future[None]] = {}
        self.stops: dict[str, asyncio.Event] = {}
        self.failed = asyncio.Event()  # a worker ended on an error: serve stops, as before
        self._errors: list[BaseException] = []
        self._lock = asyncio.Lock()
        self._closing = False

    async def start(self, delivery: _Delivery) -> None:
        name = delivery.integration.name
        delivery.worker = Worker(
            delivery.engine,
            self.queue.view(name),
            "embedded",
            metrics=self.metrics,
            emit=_emit if self.options.print_outcomes else None,
            visibility_seconds=self.options.visibility_seconds,
            max_deliveries=self.options.max_deliveries,
        )
        await delivery.engine.__aenter__()
        stop = asyncio.Event()
        task = asyncio.ensure_future(delivery.worker.run(stop))
        task.add_done_callback(self._note_end)
        self.deliveries[name], self.tasks[name], self.stops[name] = delivery, task, stop

    def _note_end(self, task: asyncio.Future[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._errors.append(task.exception())  # type: ignore[arg-type]
            self.failed.set()

    async def _stop(self, names: list[str], seconds: float, what: str) -> None:
        for name in names:
            self.stops[name].set()
        await _drain([self.tasks[n] for n in names], seconds, what)
        for name in reversed(names):
            delivery = self.deliveries.pop(name)
            self.tasks.pop(name)
            self.stops.pop(name)
            try:
                await delivery.engine.__aexit__(None, None, None)
            finally:
                await delivery.session.close()

    async def stop_all(self, seconds: float) -> None:
        """SIGTERM: every worker finishes what it read, then every engine closes; a worker's error is raised."""
        async with self._lock:
            self._closing = True
            await self._stop(list(self.deliveries), seconds, "serve")
        if self._errors:
            raise self._errors[0]

    async def close(self) -> None:
        """What is still running after an error: stopped at once."""
        async with self._lock:
            self._closing = True
            for task in self.tasks.values():
                task.cancel()
            await self._stop(list(self.deliveries), 0.0, "serve")

    async def changed(self, name: str) -> str:
        """An integration set up in the console was saved or deleted: what this serve did about it (one line)."""
        from ..state.console_integrations import StoredIntegration

        async with self._lock:
            if self._closing:
                return "This serve is shutting down; the next start delivers it as saved."
            if name in self.given:
                return ""
            was = name in self.deliveries
            if was:
                await self._stop([name], self.options.drain_seconds, f"integration {name}")
            stored: list[StoredIntegration] = [i for i in stored_in(self.backend) if i.name == name]
            if not stored:
                dropped = self.queue.remove_integration(name)
                if name in self.names:
                    self.names.remove(name)
                if not self.names:  # the last one: nothing would deliver what is taken now
                    _refuse_or_wait(dataclasses.replace(self.options, config=_NO_INTEGRATION, resting=()), self.intake)
                log.log(
                    logging.WARNING if dropped else logging.INFO,  # events taken with a 200 that no one will deliver
                    "integration %s: deleted in the console; no longer delivered; %d waiting event(s) dropped",
                    name,
                    dropped,
                )
                return "This serve no longer delivers it" + (
                    f"; the {dropped} event(s) waiting for it were dropped." if dropped else "."
                )
            made = load_console_made(
                stored,
                os.environ if self.options.environ is None else self.options.environ,
                taken=self.given,
                preset_path=self.options.preset_path,
            )
            self.queue.add_integration(name)  # its place, even while it cannot be opened: nothing waits in vain
            if name not in self.names:
                self.names.append(name)
            if not made.integrations:
                why = made.skipped[0]
                log.warning("warning: %s", why)
                return "This serve cannot deliver it yet: " + why.split(" is skipped: ", 1)[-1]
            integration = made.integrations[0]
            delivery = _delivery(integration, self.metrics, self.backend, self.options.record)
            for secret in (*self.options.config.secrets(), *integration.settings.secrets()):
                delivery.engine.redactor.add(secret)
            for redactor in self.redactors.redactors:
                for secret in integration.settings.secrets():
                    redactor.add(secret)
            self.redactors.redactors.append(delivery.engine.redactor)
            try:
                await self.start(delivery)
            except BaseException:
                await delivery.session.close()
                raise
            self.intake.refusing = None
            log.info("integration %s: %s from the console; delivering", name, "edited" if was else "saved")
            return (
                "This serve delivers it with these settings from now on."
                if was
                else "This serve delivers it from now on: the events accepted from now on."
            )


async def _serve_redis(
    options: ServiceOptions, configure: Configure, metrics: Metrics, stop: asyncio.Event, say: Callable[[str], None]
) -> int:
    from ..state.redis import RedisState
    from ..state.redis.queue import RedisQueue

    assert options.redis is not None
    state = RedisState(options.redis)
    try:
        state.check()
        options, skipped = with_console_made(options, state, secrets=False)
        config = options.config
        redactor = Redactor(
            [s for s in (*config.secrets(), *options.intake.write_keys, options.intake.signing_secret) if s]
        )
        options = dataclasses.replace(options, watch=None)  # the Redis intake delivers nothing: workers restart
        configure(redactor)
        _say_skipped(skipped)
        client = state.async_client()
        stream = state.keys.events(config.stream)
        await _align_groups(client, stream, [*config.names(), *options.resting])
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

        def remember(events: Sequence[Mapping[str, Any]]) -> None:
            if len(pipelines) == 1:  # a request's identifies in two round trips
                pipelines[0].learn_identities(events)
                return
            # Several presets share the entries: each identify goes through all of them before the next, as
            # one at a time would (an id another person's identify took over must see them in that order).
            for event in events:
                for pipeline in pipelines:
                    pipeline.learn_identity(event)

        queue = RedisQueue(client, stream)
        intake = Intake(queue, options.intake, metrics, remember_many=remember if pipelines else None)
        waiting = _refuse_or_wait(options, intake)
        named = [*config.names(), *options.resting]
        lags = {name: RedisQueue(client, stream, group=name) for name in named}

        async def lag(name: str) -> int:
            return await lags[name].lag()

        _gauges(metrics, queue, named, lag, state)
        with _signals(stop):
            runner, port = await _start_site(_intake_app(intake, options), options.host, options.port)
            try:
                say(url_of(options.host, port))
                if waiting:
                    _say_nothing_yet(url_of(options.host, port))
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
    # The intake writes identity (serve --redis): a worker only reads it.
    state = RedisState(options.redis, identity_writes=False)
    deliveries: list[_Delivery] = []
    queues: list[Any] = []
    try:
        state.check()
        options, skipped = with_console_made(options, state)
        if nothing_configured(options):
            raise IntegrationsError(
                [
                    f"{NOTHING_TO_DELIVER.replace('this state store', 'this Redis')}; set one up in the console of "
                    "`serve --console --redis URL`, then start the worker"
                ]
            )
        config = options.config
        stream = state.keys.events(config.stream)
        deliveries = [_delivery(i, metrics, state, options.record) for i in options.working()]
        configure(_redactor(options, deliveries))  # type: ignore[arg-type]
        _say_skipped(skipped)
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


async def _until(stop: asyncio.Event, tasks: Sequence[asyncio.Future[Any]]) -> None:
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
