"""``signal-engine sandbox NAME``: serve a local stand-in for a destination API.

The sandboxes are found, not listed: every public module of
``engine.sandbox`` other than ``common`` is one, named after its module and
exposing ``main(argv) -> int``. Adding a fake needs no change here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any

from .. import sandbox as sandbox_package

_NOT_SANDBOXES = frozenset({"common"})


def available() -> list[str]:
    """The sandbox names, from the package's modules (none is imported to list them)."""
    return sorted(info.name for info in pkgutil.iter_modules(sandbox_package.__path__)
                  if not info.name.startswith("_") and info.name not in _NOT_SANDBOXES)


def register(sub: Any) -> None:
    names = available()
    sandbox = sub.add_parser("sandbox", help="serve a local imitation of a destination API",
                             description="Serve a local imitation of a destination API on loopback. "
                                         "Each takes its own options: signal-engine sandbox NAME --help.")
    sandbox.add_argument("destination", choices=names, metavar="NAME", help=f"one of: {', '.join(names)}")
    sandbox.add_argument("options", nargs=argparse.REMAINDER, help="options of that sandbox (see: sandbox NAME --help)")
    sandbox.set_defaults(func=cmd_sandbox)


def cmd_sandbox(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"{sandbox_package.__name__}.{args.destination}")
    return int(module.main(list(args.options)))
