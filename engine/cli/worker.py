"""``signal-engine worker``: deliver from the Redis Stream, for every integration or those named; run many."""

from __future__ import annotations

import argparse
import functools
from typing import Any

from ..event_loop import run_fast
from .common import UsageError, add_preset_path_option
from .logs import add_logging_options, say_on_stderr
from .record_options import add_record_options, record_choice
from .report import EXIT_OK
from .service_common import add_config_options, integrations_for

DEFAULT = " (default: %(default)s)"


def register(sub: Any) -> None:
    worker = sub.add_parser(
        "worker",
        help="deliver events from a Redis Stream (run several, on any machine)",
        description="Consume the events `signal-engine serve --redis URL` queued, with one Redis consumer group "
        "per integration (--config FILE, or PRESET as one integration, and those set up in the console, read "
        "from the Redis at start; with neither --config nor PRESET, those alone): for each integration, each event "
        "is delivered and acknowledged with its outcome by one worker; entries a "
        "dead worker left are claimed after the visibility timeout. Tokens, the rate budget, identity, "
        "the delivery journal and dead letters are shared through Redis. Outcome lines go to stdout "
        "(only they, compact JSON as `run` prints them) and to a capped stream (`signal-engine tail`); "
        "'worker NAME consuming ...' and 'metrics on URL' go to stderr. SIGTERM drains and exits.",
    )
    add_config_options(
        worker,
        integrations="deliver for this integration only (repeatable; default: every enabled integration of the file)",
    )
    worker.add_argument(
        "--redis", metavar="URL", required=True, help="the Redis serve appends to (redis://host:port/db)"
    )
    worker.add_argument(
        "--consumer", metavar="NAME", help="this worker's name in the consumer group (default: HOSTNAME-PID)"
    )
    worker.add_argument(
        "--visibility-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="an entry left unacknowledged this long by a stopped worker is claimed" + DEFAULT,
    )
    worker.add_argument(
        "--max-deliveries",
        type=int,
        default=5,
        metavar="N",
        help="an event handed to workers this many times without finishing (it stops each worker "
        "that takes it) becomes a dead letter, cause poison" + DEFAULT,
    )
    worker.add_argument(
        "--drain-seconds", type=float, default=30.0, help="on SIGTERM, how long to finish what was read" + DEFAULT
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (0 picks one; default: none)",
    )
    worker.add_argument("--host", default="127.0.0.1", help="address of the metrics port" + DEFAULT)
    worker.add_argument("--quiet", action="store_true", help="do not print outcome lines on stdout")
    add_record_options(worker)
    add_logging_options(worker)
    add_preset_path_option(worker)
    worker.set_defaults(func=cmd_worker, port=None)


def cmd_worker(args: argparse.Namespace) -> int:

    config = integrations_for(args, require=True, console_only=True)
    for name in args.integration or []:
        if name in config.names() and not config.get(name).enabled:
            raise UsageError(f"--integration {name}: it is disabled in {args.config} (enabled: false)")
    if args.visibility_timeout < 1:
        raise UsageError("--visibility-timeout must be at least 1 second")
    if args.max_deliveries < 1:
        raise UsageError("--max-deliveries must be at least 1")
    from ..service.serving import ServiceOptions, work
    from .service_common import configure_for, service_errors

    args.port = args.metrics_port
    options = ServiceOptions(
        config,
        redis=args.redis,
        only=args.integration,
        host=args.host,
        consumer=args.consumer,
        visibility_seconds=args.visibility_timeout,
        drain_seconds=args.drain_seconds,
        metrics_port=args.metrics_port,
        print_outcomes=not args.quiet,
        max_deliveries=args.max_deliveries,
        record=record_choice(args),
        preset_path=[str(p) for p in getattr(args, "preset_path", []) or []],
        announce=functools.partial(say_on_stderr, args.log_format),
    )
    with service_errors(args):
        run_fast(work(options, configure_for(args)))
    return EXIT_OK
