"""``signal-engine``: check presets, run event streams, run golden cases, serve a sandbox.

Every failure a user can cause is reported as one line on stderr; a
traceback reaching a user is a bug, so ``main`` is the last line of defence.
"""

from __future__ import annotations

import argparse
import codecs
import json
import re
import sys
from pathlib import Path
from typing import IO, Any, Iterator, TextIO

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


def _say(text: str) -> None:
    """Print a line to stdout; a file name the output encoding cannot show is escaped, not fatal."""
    try:
        print(text)
    except UnicodeEncodeError:
        print(text.encode("ascii", "backslashreplace").decode("ascii"))


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
                _say(line)
            continue
        _say(f"ok: {name} ({preset.name}: {len(preset.events.track)} mapped track events, "
              f"{len(preset.actions)} action(s))")
    return 1 if failed else 0


def read_events(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """(index, event, problem) per non-blank line; index is the 0-based line number.

    A line that is not UTF-8 or not JSON yields a problem for that line only;
    the lines around it are read as usual. Only an unopenable or unreadable
    file stops the stream (with a :class:`UsageError`).
    """
    yield from _events_from(_open_events(path), path)


def _open_events(path: str) -> IO[bytes]:
    """The byte stream behind ``--events``; ``-`` is standard input."""
    if path == "-":
        stdin = sys.stdin
        if stdin is None:
            raise UsageError("--events -: there is no standard input")
        return getattr(stdin, "buffer", stdin)
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by _events_from
    except OSError as exc:
        raise UsageError(f"--events {path}: cannot open: {exc.strerror or exc}") from None


def _events_from(stream: IO[Any], path: str) -> Iterator[tuple[int, Any, str | None]]:
    """Decode and parse each line on its own, so one bad line cannot spoil the others."""
    try:
        for index, raw in enumerate(_byte_lines(stream)):
            if index == 0 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(raw[:exc.start].decode("utf-8", "replace")) + 1
                yield index, None, (f"line {index + 1}: not UTF-8 text "
                                    f"(byte 0x{raw[exc.start]:02x} at column {column})")
                continue
            if not line.strip():
                continue
            try:
                event = json.loads(line, parse_constant=_reject_constant)
            except json.JSONDecodeError as exc:
                yield index, None, f"line {index + 1}: not valid JSON: {exc.msg} at column {exc.colno}"
            except RecursionError:
                yield index, None, f"line {index + 1}: not valid JSON: nested too deeply"
            except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
                yield index, None, f"line {index + 1}: not valid JSON: {_json_value_error(exc)}"
            else:
                yield index, event, None
    except OSError as exc:
        raise UsageError(f"--events {path}: cannot read: {exc.strerror or exc}") from None
    finally:
        if path != "-":
            stream.close()


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON; Python accepts them, the destination would not."""
    raise ValueError(f"{name} is not a JSON number")


def _byte_lines(stream: IO[Any]) -> Iterator[bytes]:
    """Lines without their line ending; CR, LF and CRLF all end a line, as in text mode."""
    for chunk in stream:
        if isinstance(chunk, str):  # a text stream without a byte buffer (an embedding host's StringIO)
            chunk = _to_bytes(chunk)
        if chunk.endswith(b"\n"):
            chunk = chunk[:-1]
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
        yield from chunk.split(b"\r")


def _to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")  # undoes a surrogateescape decode
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")  # then reported as not UTF-8


def _json_value_error(exc: ValueError) -> str:
    digits = re.search(r"\(\s*(\d+)\s*digits\)", str(exc))
    if "integer string conversion" in str(exc) and digits:
        return f"a number has more than {digits.group(1)} digits"
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


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
    data = outcome.to_dict()
    try:
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud800" escape in the input) or a character the
        # output encoding lacks: escape everything non-ASCII; still one line of JSON.
        out.write(json.dumps(data, ensure_ascii=True) + "\n")
    out.flush()


def cmd_run(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset)
    settings = _settings_for(args, preset.settings, require=not args.dry_run)
    stream = _open_events(args.events)  # before anything is sent: a bad path is one line and exit 2
    try:
        events = _events_from(stream, args.events)
        if args.dry_run:
            pipeline = Pipeline(preset, settings)
            for index, event, problem in events:
                if problem is not None:
                    emit(dropped(index, None, INVALID_EVENT, problem))
                else:
                    emit(pipeline.dry_run(event, index))
            return 0
        from .delivery_cli import run_delivery  # aiohttp machinery only when delivering

        return run_delivery(preset, settings, args, events, emit)
    finally:
        if args.events != "-":
            stream.close()


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
            _say(f"ERROR {case.name}: {(str(exc).splitlines() or [type(exc).__name__])[0]}")
            continue
        if args.update:
            if golden.update(result):
                updated += 1
                _say(f"updated {case.name}")
            continue
        if result.passed:
            _say(f"ok    {case.name}")
        else:
            failures += 1
            _say(f"FAIL  {case.name}" + ("  (no expected file; run with --update)" if result.expected is None else ""))
            _say(result.diff())
    summary = f"{len(cases)} golden case(s): "
    summary += f"{updated} updated" if args.update else f"{len(cases) - failures} passed, {failures} failed"
    _say(summary)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
