"""``signal-engine sandbox``: local stand-ins for destination APIs.

The sandboxes are found, not listed: every public module of
``engine.sandbox`` other than ``common`` is one, named after its module,
exposing ``main(argv) -> int`` and a one-line ``SUMMARY``. Adding a fake
needs no change here. The options of each sandbox belong to it
(``signal-engine sandbox NAME --help``); they are forwarded untouched, so
the web server is imported only when a sandbox is actually started (the
summaries are read from the source, not imported).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any

from .. import sandbox as sandbox_package
from .report import EXIT_USAGE

_NOT_SANDBOXES = frozenset({"common"})


def available() -> list[str]:
    """The sandbox names, from the package's modules (none is imported to list them)."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(sandbox_package.__path__)
        if not info.name.startswith("_") and info.name not in _NOT_SANDBOXES
    )


def summary(name: str) -> str:
    """The sandbox's ``SUMMARY`` string, read from its source without importing it."""
    spec = importlib.util.find_spec(f"{sandbox_package.__name__}.{name}")
    origin = spec.origin if spec is not None else None
    if origin is None:
        return ""
    tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUMMARY" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    return ""


def register(sub: Any) -> None:
    names = available()
    listing = "\n".join(f"  {name:<10} {summary(name)}" for name in names)
    sandbox = sub.add_parser(
        "sandbox",
        help="serve a local imitation of a destination API",
        description="Serve a local imitation of a destination API on loopback, to try presets and delivery "
        "without the real service.",
        epilog=f"destinations:\n{listing}\n\nThe options of a destination: signal-engine sandbox DESTINATION --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sandbox.add_argument("destination", choices=names, metavar="DESTINATION", help="the API to imitate (see below)")
    sandbox.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    sandbox.set_defaults(func=cmd_sandbox, sandbox_parser=sandbox)


def cmd_sandbox(args: argparse.Namespace) -> int:
    if args.destination not in available():  # pragma: no cover - argparse's choices refuse it first
        args.sandbox_parser.print_help(sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(f"{sandbox_package.__name__}.{args.destination}")
    return int(module.main(list(args.options)))
