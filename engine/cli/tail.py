"""``signal-engine tail``: watch the outcomes workers publish, per integration (Redis)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import UsageError, add_preset_path_option
from .report import EXIT_OK


def register(sub: Any) -> None:
    tail = sub.add_parser(
        "tail",
        help="print the outcomes workers publish (Redis)",
        description="Print the last outcomes of the integrations of --config FILE (or of --integration NAME), or "
        "of PRESET, from their capped outcome streams in Redis, one JSON line each naming its "
        "integration, then follow new ones until Ctrl-C (or exit at once with --no-follow).",
    )
    tail.add_argument(
        "preset",
        metavar="PRESET",
        nargs="?",
        help="the one-preset form: built-in name (destination/preset) or path to a YAML preset",
    )
    tail.add_argument("--config", metavar="FILE", help="an integrations file: the outcomes of its integrations")
    tail.add_argument(
        "--integration",
        metavar="NAME",
        action="append",
        default=None,
        help="with --config: this integration's outcomes only (repeatable)",
    )
    tail.add_argument("--redis", metavar="URL", required=True, help="the Redis the workers use")
    tail.add_argument(
        "-n",
        "--lines",
        type=int,
        default=10,
        metavar="N",
        help="how many recent outcomes to print first (default: %(default)s)",
    )
    tail.add_argument(
        "--follow",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep printing new outcomes (default: yes)",
    )
    add_preset_path_option(tail)
    tail.set_defaults(func=cmd_tail, host=None, port=None)


def cmd_tail(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    if args.lines < 0:
        raise UsageError("--lines must be 0 or more")
    if args.config:
        from .service_common import integrations_for

        args.settings = None
        names = args.integration or integrations_for(args, require=False).names()
        if args.integration:
            integrations_for(args, require=False)  # the names are checked against the file
    else:
        if args.integration:
            raise UsageError("--integration NAME goes with --config FILE")
        if not args.preset:
            raise UsageError("name a PRESET, or pass --config FILE")
        from ..compile.compiler import load_preset
        from ..service.integrations import name_for_preset

        names = [name_for_preset(load_preset(args.preset, args.preset_path))]  # unknown: a usage error
    from ..service.serving import tail
    from .service_common import service_errors

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with service_errors(args):
        asyncio.run(tail(args.redis, names, follow=args.follow, last=args.lines, out=out))
    return EXIT_OK
