"""``signal-engine``: check presets, run event streams, run golden cases, serve a sandbox.

Every failure a user can cause is reported as one line on stderr; a
traceback reaching a user is a bug, so ``main`` is the last line of defence.
Each command lives in a module of its own; this one only dispatches.

Exit status, the same for every command (README, "Exit status"):
0 every event ended delivered, dropped or would_send (or: nothing was found wrong);
1 an event failed or was dead-lettered (or: ``check``/``golden`` found a problem);
2 a usage or configuration error, before any event was processed;
70 an internal error; 130 interrupted (SIGINT), 143 terminated (SIGTERM),
141 stdout was closed: a run stopped early, every event it read recorded.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..language.compiler import PresetError
from ..language.settings import SettingsError
from . import check, dlq, explain, golden, run, sandbox, scaffold, schema
from .common import UsageError, located
from .report import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE
from .stopping import RunStop

EXIT_INTERNAL = 70


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (UsageError, PresetError, SettingsError) as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"signal-engine: {line}" if not located(line) else line, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("signal-engine: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        RunStop().stdout_closed()  # no "Exception ignored" when the interpreter flushes stdout on exit
        print("signal-engine: stdout was closed (broken pipe); stopped", file=sys.stderr)
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        first = (str(exc).splitlines() or [""])[0][:300]
        print(f"signal-engine: internal error: {type(exc).__name__}: {first}", file=sys.stderr)
        return EXIT_INTERNAL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signal-engine", description="Declarative event-delivery engine.",
        epilog="Exit status: 0 every event delivered, dropped or would_send; 1 an event failed or was "
               "dead-lettered (check and golden: a problem was found); 2 a usage or configuration error; "
               "130, 143 or 141 a run stopped by SIGINT, SIGTERM or a closed stdout (every event read recorded).")
    parser.add_argument("--version", action="version", version=f"signal-engine {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")
    for command in (check, run, explain, golden, schema, scaffold, dlq, sandbox):
        command.register(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
