"""``signal-engine serve``: the HTTP intake, with delivery in the same process or workers on Redis."""

from __future__ import annotations

import argparse
import functools
import os
from typing import Any

from ..event_loop import run_fast
from .common import UsageError, add_preset_path_option, add_reset_state_option, check_state_dir
from .console import console_mount
from .logs import add_logging_options, say_on_stderr
from .record_options import add_record_options, record_choice
from .report import EXIT_OK
from .service_common import add_config_options, integrations_for

DEFAULT = " (default: %(default)s)"


def register(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the HTTP intake (Signal's API and Segment-compatible routes)",
        description="Serve the HTTP intake: POST /v1/events (HMAC-signed) and the Segment-compatible /v1/batch, "
        "/v1/track, /v1/identify, /v1/page, /v1/screen and /v1/group (write key as the HTTP Basic "
        "username). Without --redis, events are queued in the state directory and delivered by this "
        "process; with --redis they are appended to a Redis Stream for `signal-engine worker`. stdout holds "
        "only outcome lines, one compact JSON object each, as `run` prints them; stderr says 'listening on "
        "http://HOST:PORT' when ready (under --log-format json, an object with a url field); SIGTERM drains and exits. With --config FILE, one "
        "intake feeds every integration of the file, each consuming on its own; PRESET --settings FILE "
        "is one integration named after the preset. The integrations set up in the console (kept in --state "
        "DIR or --redis URL) are delivered beside them, read at start; with neither --config nor PRESET, "
        "those alone, and if there is none, --console serves the console to set up the first one (events "
        "are refused with 503 until one is saved). Without --redis, an integration saved, edited or deleted "
        "in this serve's console is started, restarted or stopped at once. Write keys come from the file's intake: section, "
        "SIGNAL_WRITE_KEYS (comma-separated), the signing secret from SIGNAL_SIGNING_SECRET, or both "
        "from --intake FILE.",
    )
    add_config_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on" + DEFAULT)
    serve.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one" + DEFAULT)
    serve.add_argument(
        "--intake", metavar="FILE", help="YAML with write_keys and signing_secret (else the environment)"
    )
    serve.add_argument(
        "--state",
        metavar="DIR",
        default=".signal-state",
        help="without --redis: the queue, token store, dead letters and identity memory" + DEFAULT,
    )
    add_reset_state_option(serve)
    serve.add_argument("--redis", metavar="URL", help="append to a Redis Stream (redis://host:port/db) for workers")
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=512 * 1024,
        help="largest request body, compressed or not; larger gets 413" + DEFAULT,
    )
    serve.add_argument(
        "--max-backlog",
        type=int,
        default=100_000,
        help="events queued and not yet delivered before new ones get 429" + DEFAULT,
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="close a connection that sends no complete request head this long after it opened or "
        "after its last answer (slow headers, idle keep-alive)" + DEFAULT,
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="answer 408 and close when a request's body has not fully arrived this long after its head" + DEFAULT,
    )
    serve.add_argument(
        "--max-deliveries",
        type=int,
        default=5,
        metavar="N",
        help="without --redis: an event handed to the worker this many times without finishing "
        "(it stops the worker each time) becomes a dead letter, cause poison" + DEFAULT,
    )
    serve.add_argument(
        "--drain-seconds", type=float, default=30.0, help="on SIGTERM, how long to finish what is under way" + DEFAULT
    )
    serve.add_argument("--quiet", action="store_true", help="do not print outcome lines on stdout")
    add_record_options(serve)
    serve.add_argument(
        "--console",
        action="store_true",
        help="also serve the web console under /console on this port; any --host but loopback "
        "needs $SIGNAL_CONSOLE_TOKEN",
    )
    add_logging_options(serve)
    add_preset_path_option(serve)
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:

    from ..service.config import SIGNING_SECRET_ENV, WRITE_KEYS_ENV, IntakeConfigError, load_intake_config

    # With Redis the intake only writes identify traits: it needs no credentials.
    config = integrations_for(args, require=args.redis is None, console_only=True)
    if args.max_body_bytes < 1 or args.max_backlog < 1:
        raise UsageError("--max-body-bytes and --max-backlog must be at least 1")
    if args.idle_timeout <= 0 or args.body_timeout <= 0:
        raise UsageError("--idle-timeout and --body-timeout must be more than 0 seconds")
    if args.max_deliveries < 1:
        raise UsageError("--max-deliveries must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be from 0 to 65535")
    try:
        environ = dict(os.environ)
        if config.write_keys is not None:  # the integrations file's intake: section wins over the environment
            environ[WRITE_KEYS_ENV] = ",".join(config.write_keys)
        if config.signing_secret is not None:
            environ[SIGNING_SECRET_ENV] = config.signing_secret
        intake = load_intake_config(
            environ,
            args.intake,
            max_body_bytes=args.max_body_bytes,
            max_backlog=args.max_backlog,
            idle_timeout_seconds=args.idle_timeout,
            body_timeout_seconds=args.body_timeout,
        )
    except IntakeConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.redis is None:
        check_state_dir(args.state, reset=args.reset_state, queue=True)
    elif args.reset_state:
        raise UsageError("--reset-state applies to a --state directory, not to --redis")
    from ..service.serving import ServiceOptions, serve
    from .service_common import configure_for, service_errors

    mount = console_mount(args, config) if args.console else None
    options = ServiceOptions(
        config,
        state=args.state,
        redis=args.redis,
        host=args.host,
        port=args.port,
        intake=intake,
        drain_seconds=args.drain_seconds,
        print_outcomes=not args.quiet,
        max_deliveries=args.max_deliveries,
        record=record_choice(args),
        preset_path=[str(p) for p in getattr(args, "preset_path", []) or []],
        mount=mount,
        # Embedded, this serve starts delivering an integration the moment it is saved in its console.
        watch=mount.watch if mount is not None and args.redis is None else None,
        announce=functools.partial(say_on_stderr, args.log_format),
    )
    with service_errors(args):
        run_fast(serve(options, configure_for(args)))
    return EXIT_OK
