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
import functools
import importlib
import os
import sys

from ..language.compiler import PresetError
from ..language.settings import SettingsError
from .common import UsageError, located
from .report import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE
from .stopping import RunStop

EXIT_INTERNAL = 70


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser(argv[0] if argv else None)
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


# Command name -> the module (in this package) that registers it. Only the
# named command's module is imported: each pulls in what its command needs.
COMMANDS = (("check", "check"), ("run", "run"), ("explain", "explain"), ("golden", "golden"), ("schema", "schema"),
            ("init", "scaffold"), ("auth", "auth"), ("dlq", "dlq"), ("sandbox", "sandbox"), ("serve", "serve"),
            ("worker", "worker"), ("tail", "tail"), ("console", "console"))


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; when ``command`` names a command, only that one's options are built.

    argparse formats every option as it is added, which costs a run more
    start-up time than reading its preset. Help and errors at the top level
    still list every command.
    """
    parser = argparse.ArgumentParser(
        prog="signal-engine", description="Declarative event-delivery engine.", formatter_class=_Formatter,
        epilog="Exit status: 0 every event delivered, dropped or would_send; 1 an event failed or was "
               "dead-lettered (check and golden: a problem was found); 2 a usage or configuration error; "
               "130, 143 or 141 a run stopped by SIGINT, SIGTERM or a closed stdout (every event read recorded).")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(metavar="COMMAND",
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Formatter))
    named = [module for name, module in COMMANDS if name == command]
    for module in named or [module for _, module in COMMANDS]:
        importlib.import_module(f"{__package__}.{module}").register(sub)
    return parser


class _Version(argparse.Action):
    """``--version``, read only when asked for: finding the installed version costs every start 20 ms."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        import engine

        print(f"signal-engine {engine.__version__}")
        parser.exit()


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
