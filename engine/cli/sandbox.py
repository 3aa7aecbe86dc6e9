"""``signal-engine sandbox``: local stand-ins for destination APIs."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    sandbox = sub.add_parser("sandbox", help="serve a local imitation of a destination API")
    sandbox.add_argument("destination", choices=["outreach"])
    sandbox.add_argument("options", nargs=argparse.REMAINDER, help="options of the sandbox (see: sandbox outreach --help)")
    sandbox.set_defaults(func=cmd_sandbox)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from ..sandbox.outreach import main as sandbox_main

    return sandbox_main(list(args.options))
