"""``signal-engine``: check presets, run event streams, run golden cases, serve a sandbox.

Every failure a user can cause is reported as one line on stderr; a
traceback reaching a user is a bug, so ``main`` is the last line of defence.
Each command lives in a module of its own; this one only dispatches.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from ..language.compiler import PresetError
from ..language.settings import SettingsError
from . import check, dlq, golden, run, sandbox
from .common import UsageError, located


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser(argv[0] if argv else None)
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


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; when ``command`` names a command, only that one's options are built.

    argparse formats every option as it is added, which costs a run more
    start-up time than reading its preset. Help and errors at the top level
    still list every command.
    """
    parser = argparse.ArgumentParser(prog="signal-engine", description="Declarative event-delivery engine.",
                                     formatter_class=_Formatter)
    sub = parser.add_subparsers(metavar="COMMAND",
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Formatter))
    commands = (check, run, dlq, sandbox, golden)
    named = [c for c in commands if c.__name__.rsplit(".", 1)[-1] == command]
    for module in named or commands:
        module.register(sub)
    return parser


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, minus its ``import shutil`` (bz2, lzma...: 5 ms at every start).

    argparse builds a formatter for every option it adds, only to find the
    terminal width; this reads the width the way shutil does.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


if __name__ == "__main__":
    sys.exit(main())
