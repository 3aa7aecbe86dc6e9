"""``signal-engine``: check presets, run event streams, run golden cases, serve a sandbox.

Every failure a user can cause is reported as one line on stderr; a
traceback reaching a user is a bug, so ``main`` is the last line of defence.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator, TextIO

from . import resources
from .outcome import INVALID_EVENT, Outcome, dropped
from .pipeline import Pipeline
from .preset import PresetError, load_preset
from .settings import SettingsError, load_settings_file, resolve


class UsageError(Exception):
    """A one-line problem with what the user asked for."""


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
            print(f"signal-engine: {line}" if not _located(line) else line, file=sys.stderr)
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


_LOCATED = re.compile(r"^\S+:\d+(:\d+)?: ")


def _located(line: str) -> bool:
    """Lines that already start with file:line speak for themselves."""
    return bool(_LOCATED.match(line))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signal-engine", description="Declarative event-delivery engine.")
    sub = parser.add_subparsers(metavar="COMMAND")

    check = sub.add_parser("check", help="validate presets (all built-in presets when none is named)")
    check.add_argument("presets", nargs="*", metavar="PRESET_OR_PATH")
    check.set_defaults(func=cmd_check)

    run = sub.add_parser("run", help="run an event stream through a preset")
    run.add_argument("preset", metavar="PRESET", help="built-in name (e.g. outreach/lead-capture) or path to a YAML preset")
    run.add_argument("--events", required=True, metavar="FILE|-", help="newline-delimited JSON events; - reads stdin")
    run.add_argument("--settings", metavar="FILE", help="YAML mapping of setting values; ${ENV_VAR} is expanded")
    run.add_argument("--dry-run", action="store_true", help="build and print each request without sending it")
    run.add_argument("--state", metavar="DIR", default=".signal-state",
                     help="token store, dead letters and identity memory (default ./.signal-state)")
    run.add_argument("--verbose", action="store_true", help="log every delivery attempt to stderr")
    run.set_defaults(func=cmd_run)

    dlq = sub.add_parser("dlq", help="list or replay dead letters")
    dlq.set_defaults(func=lambda _args: (dlq.print_help(sys.stderr), 2)[1])
    dlq_sub = dlq.add_subparsers(metavar="ACTION")
    for name, helptext in (("list", "print the dead letters of a preset"),
                           ("replay", "re-send dead letters; those delivered are removed")):
        cmd = dlq_sub.add_parser(name, help=helptext)
        cmd.add_argument("preset", metavar="PRESET")
        cmd.add_argument("--settings", metavar="FILE", help="YAML mapping of setting values (replay needs credentials)")
        cmd.add_argument("--state", metavar="DIR", default=".signal-state")
        cmd.add_argument("--verbose", action="store_true")
        cmd.set_defaults(func=cmd_dlq, dlq_action=name)

    sandbox = sub.add_parser("sandbox", help="serve a local imitation of a destination API")
    sandbox.add_argument("destination", choices=["outreach"])
    sandbox.add_argument("options", nargs=argparse.REMAINDER, help="options of the sandbox (see: sandbox outreach --help)")
    sandbox.set_defaults(func=cmd_sandbox)

    golden = sub.add_parser("golden", help="run golden cases and show a diff for each mismatch")
    golden.add_argument("path", nargs="?", default="golden", metavar="PATH")
    golden.add_argument("--update", action="store_true", help="rewrite the expected files with the actual output")
    golden.set_defaults(func=cmd_golden)
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    names = args.presets or resources.builtin_presets()
    failed = 0
    for name in names:
        try:
            preset = load_preset(name)
        except PresetError as exc:
            failed += 1
            for line in exc.problems:
                print(line)
            continue
        print(f"ok: {name} ({preset.name}: {len(preset.events.track)} mapped track events, "
              f"{len(preset.actions)} action(s))")
    return 1 if failed else 0


def read_events(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(index, event, problem) per non-blank line; index is the 0-based line number."""
    stream: TextIO
    if path == "-":
        stream = sys.stdin
    else:
        try:
            stream = open(path, encoding="utf-8-sig")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"--events {path}: cannot open: {exc.strerror or exc}") from None
    try:
        for index, line in enumerate(stream):
            if not line.strip():
                continue
            try:
                yield index, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield index, None, f"line {index + 1}: not valid JSON: {exc.msg} at column {exc.colno}"
            except RecursionError:
                yield index, None, f"line {index + 1}: JSON nested too deeply"
    except UnicodeDecodeError as exc:
        raise UsageError(f"--events {path}: not UTF-8 text: {exc.reason}") from None
    finally:
        if stream is not sys.stdin:
            stream.close()


def _settings_for(args: argparse.Namespace, preset_settings: Any, require: bool) -> Any:
    supplied: dict[str, Any] = {}
    where: dict[str, str] = {}
    if args.settings:
        supplied, where = load_settings_file(args.settings)
    try:
        return resolve(preset_settings, supplied, require=require, where=where)
    except SettingsError as exc:
        if args.settings:
            raise
        raise SettingsError(f"{exc}; pass --settings FILE (or use --dry-run, which needs no credentials)") from None


def emit(outcome: Outcome, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call, so redirection and capture work
    out.write(json.dumps(outcome.to_dict(), ensure_ascii=False) + "\n")
    out.flush()


def cmd_run(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    if args.dry_run:
        settings = _settings_for(args, preset.settings, require=False)
        pipeline = Pipeline(preset, settings)
        for index, event, problem in read_events(args.events):
            if problem is not None:
                emit(dropped(index, None, INVALID_EVENT, problem))
            else:
                emit(pipeline.dry_run(event, index))
        return 0
    from .delivery_cli import run_delivery  # aiohttp machinery only when delivering

    settings = _settings_for(args, preset.settings, require=True)
    return run_delivery(preset, settings, args, read_events(args.events), emit)


def cmd_dlq(args: argparse.Namespace) -> int:
    from .delivery_cli import dlq_list, dlq_replay

    preset = load_preset(args.preset)
    replaying = args.dlq_action == "replay"
    settings = _settings_for(args, preset.settings, require=replaying)
    if replaying:
        return dlq_replay(preset, settings, args.state, args.verbose)
    return dlq_list(preset, settings, args.state)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox.outreach import main as sandbox_main

    return sandbox_main(list(args.options))


def cmd_golden(args: argparse.Namespace) -> int:
    from . import golden

    root = Path(args.path)
    if not root.exists():
        raise UsageError(f"{args.path}: no such golden folder or case")
    try:
        cases = golden.discover(root)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    presets: dict[str, Any] = {}
    failures = updated = 0
    for case in cases:
        try:
            result = golden.run_case(case, presets)
        except (ValueError, OSError) as exc:
            failures += 1
            print(f"ERROR {case.name}: {str(exc).splitlines()[0]}")
            continue
        if args.update:
            if golden.update(result):
                updated += 1
                print(f"updated {case.name}")
            continue
        if result.passed:
            print(f"ok    {case.name}")
        else:
            failures += 1
            print(f"FAIL  {case.name}" + ("  (no expected file; run with --update)" if result.expected is None else ""))
            print(result.diff())
    summary = f"{len(cases)} golden case(s): "
    summary += f"{updated} updated" if args.update else f"{len(cases) - failures} passed, {failures} failed"
    print(summary)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
