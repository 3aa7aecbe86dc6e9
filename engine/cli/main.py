"""``signal-engine``: check presets, run event streams, run golden cases, serve a sandbox.

Every failure a user can cause is reported as one line on stderr; a
traceback reaching a user is a bug, so ``main`` is the last line of defence.
Each command lives in a module of its own; this one only dispatches.

Exit status, the same for every command (docs/guides/cli-run.md, "Exit status"):
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
from typing import Any

from ..compile.compiler import PresetError
from ..language.settings import SettingsError
from .common import LOCATION, UsageError, located
from .logs import wants_json
from .report import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE
from .stopping import RunStop


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    json_logs = wants_json(argv)
    parser = _parser(argv[0] if argv else None)
    args = _parse(parser, argv) if json_logs else parser.parse_args(argv)
    if not getattr(args, "func", None):
        if json_logs:
            _fail(
                True,
                ["no command given (signal-engine --help lists them)"],
                "usage_error",
                usage=parser.format_usage().strip(),
            )
        else:
            parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (UsageError, PresetError, SettingsError) as exc:
        kind = {PresetError: "preset_error", SettingsError: "settings_error"}.get(type(exc), "usage_error")
        _fail(json_logs, str(exc).splitlines() or [type(exc).__name__], kind)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _fail(json_logs, ["interrupted"], "interrupted", EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        RunStop().stdout_closed()  # no "Exception ignored" when the interpreter flushes stdout on exit
        _fail(json_logs, ["stdout was closed (broken pipe); stopped"], "stdout_closed", EXIT_BROKEN_PIPE)
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        first = (str(exc).splitlines() or [""])[0][:300]
        _fail(json_logs, [f"internal error: {type(exc).__name__}: {first}"], "internal_error", EXIT_INTERNAL)
        return EXIT_INTERNAL


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parse_args``, its usage errors said as one JSON object (``--log-format json``).

    argparse prints usage and error itself and exits 2; what it printed is
    caught and said again as fields. ``--help`` and ``--version`` go to stdout as usual.
    """
    import contextlib
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return parser.parse_args(argv)
    except SystemExit as exc:
        text = said.getvalue()
        if exc.code in (0, None) or "error: " not in text:
            sys.stderr.write(text)
            raise
        usage, _, error = text.rpartition("error: ")
        prog = usage.rstrip().rsplit("\n", 1)[-1].removesuffix(":").strip()
        _fail(
            True,
            [error.strip()],
            "usage_error",
            int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE,
            command=prog,
            usage=" ".join(usage.replace(prog + ":", "").split()),
        )
        raise


def _fail(json_logs: bool, lines: list[str], kind: str, code: int = EXIT_USAGE, **fields: Any) -> None:
    """A failure on stderr: its lines as they are, or one JSON object whose fields say where and why.

    A line that starts with file:line (a preset or settings problem) gives
    ``file``, ``line`` and ``column``; several problems are listed in ``problems``.
    """
    if not json_logs:
        for line in lines:
            print(f"signal-engine: {line}" if not located(line) else line, file=sys.stderr)
        return
    from .logs import json_line

    problems = [_problem(line) for line in lines]
    first = dict(problems[0])
    message = str(first.pop("message"))
    if len(problems) > 1:
        message = f"{message} (and {len(problems) - 1} more problem(s))"
        fields["problems"] = problems
    print(json_line("error", message, event=kind, exit_code=code, **first, **fields), file=sys.stderr, flush=True)


def _problem(line: str) -> dict[str, Any]:
    match = LOCATION.match(line)
    if not match:
        return {"message": line}
    where: dict[str, Any] = {"message": line[match.end() :], "file": match["file"], "line": int(match["line"])}
    if match["column"]:
        where["column"] = int(match["column"])
    return where


# Command name -> the module (in this package) that registers it. Only the
# named command's module is imported: each pulls in what its command needs.
COMMANDS = (
    ("demo", "demo"),
    ("check", "check"),
    ("run", "run"),
    ("explain", "explain"),
    ("golden", "golden"),
    ("schema", "schema"),
    ("init", "scaffold"),
    ("auth", "auth"),
    ("dlq", "dlq"),
    ("sandbox", "sandbox"),
    ("serve", "serve"),
    ("worker", "worker"),
    ("tail", "tail"),
    ("console", "console"),
)


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; when ``command`` names a command, only that one's options are built.

    argparse formats every option as it is added, which costs a run more
    start-up time than reading its preset. Help and errors at the top level
    still list every command.
    """
    parser = argparse.ArgumentParser(
        prog="signal-engine",
        description="Declarative event-delivery engine.",
        formatter_class=_Formatter,
        epilog="Exit status: 0 every event delivered, dropped or would_send; 1 an event failed or was "
        "dead-lettered (check and golden: a problem was found); 2 a usage or configuration error; "
        "130, 143 or 141 a run stopped by SIGINT, SIGTERM or a closed stdout (every event read recorded).",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    # typeshed wants a class for parser_class; argparse only calls it, so a partial does.
    sub = parser.add_subparsers(
        metavar="COMMAND",  # type: ignore[call-overload]
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Formatter),
    )
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

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
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
