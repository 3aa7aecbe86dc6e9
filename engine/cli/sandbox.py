"""``signal-engine sandbox``: local stand-ins for destination APIs.

The options of each sandbox belong to it (``signal-engine sandbox outreach
--help``); they are forwarded untouched, so the web server is imported only
when a sandbox is actually started.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .report import EXIT_USAGE

DESTINATIONS = {
    "outreach": "Outreach: OAuth token endpoint with rotating refresh tokens, prospects create/search/update, "
                "rate limits and injected faults",
}


def register(sub: Any) -> None:
    listing = "\n".join(f"  {name:<10} {text}" for name, text in DESTINATIONS.items())
    sandbox = sub.add_parser(
        "sandbox", help="serve a local imitation of a destination API",
        description="Serve a local imitation of a destination API on loopback, to try presets and delivery "
                    "without the real service.",
        epilog=f"destinations:\n{listing}\n\nThe options of a destination: signal-engine sandbox DESTINATION --help",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sandbox.add_argument("destination", choices=sorted(DESTINATIONS), metavar="DESTINATION",
                         help="the API to imitate (see below)")
    sandbox.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    sandbox.set_defaults(func=cmd_sandbox, sandbox_parser=sandbox)


def cmd_sandbox(args: argparse.Namespace) -> int:
    if args.destination not in DESTINATIONS:  # pragma: no cover - argparse's choices refuse it first
        args.sandbox_parser.print_help(sys.stderr)
        return EXIT_USAGE
    from ..sandbox.outreach import main as sandbox_main

    return sandbox_main(list(args.options))
