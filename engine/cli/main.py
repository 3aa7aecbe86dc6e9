"""``signal-engine``: check presets, run event streams, run golden cases, serve a sandbox.

Every failure a user can cause is reported as one line on stderr; a
traceback reaching a user is a bug, so ``main`` is the last line of defence.
Each command lives in a module of its own; this one only dispatches.
"""

from __future__ import annotations

import argparse
import sys

from ..language.compiler import PresetError
from ..language.settings import SettingsError
from . import check, dlq, golden, run, sandbox
from .common import UsageError, located


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, PresetError, SettingsError) as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"signal-engine: {line}" if not located(line) else line, file=sys.stderr)
        return 1 if isinstance(exc, PresetError) else 2
    except KeyboardInterrupt:
        print("signal-engine: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        first = (str(exc).splitlines() or [""])[0][:300]
        print(f"signal-engine: internal error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 70


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signal-engine", description="Declarative event-delivery engine.")
    sub = parser.add_subparsers(metavar="COMMAND")
    for command in (check, run, dlq, sandbox, golden):
        command.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
