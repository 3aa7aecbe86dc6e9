"""``signal-engine tail``: watch the outcomes workers publish for a preset (Redis)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import UsageError, add_preset_path_option, load_preset_arg
from .report import EXIT_OK


def register(sub: Any) -> None:
    tail = sub.add_parser(
        "tail", help="print the outcomes workers publish (Redis)",
        description="Print the last outcomes of PRESET from its capped outcome stream in Redis, one JSON line each, "
                    "then follow new ones until Ctrl-C (or exit at once with --no-follow).")
    tail.add_argument("preset", metavar="PRESET", help="built-in name (destination/preset) or path to a YAML preset")
    tail.add_argument("--redis", metavar="URL", required=True, help="the Redis the workers use")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N",
                      help="how many recent outcomes to print first (default: %(default)s)")
    tail.add_argument("--follow", action=argparse.BooleanOptionalAction, default=True,
                      help="keep printing new outcomes (default: yes)")
    add_preset_path_option(tail)
    tail.set_defaults(func=cmd_tail, host=None, port=None)


def cmd_tail(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    if args.lines < 0:
        raise UsageError("--lines must be 0 or more")
    preset = load_preset_arg(args)
    from ..service.serving import tail
    from .service_common import service_errors

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with service_errors(args):
        asyncio.run(tail(args.redis, preset.name, follow=args.follow, last=args.lines, out=out))
    return EXIT_OK
