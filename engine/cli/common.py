"""What every command shares: one-line errors, output, settings and the state directory."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from ..language.settings import SettingsError, load_settings_file, resolve
from ..outcome import Outcome
from ..state.backend import open_state


class UsageError(Exception):
    """A one-line problem with what the user asked for."""


def add_preset_path_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset-path", action="append", default=[], metavar="DIR",
                        help="a folder of presets (repeatable), searched for preset names before "
                             "$SIGNAL_ENGINE_PRESET_PATH and the built-in presets")


def load_preset_arg(args: argparse.Namespace, name: str | None = None) -> Any:
    """The preset named on the command line, looked up in --preset-path folders first."""
    from ..language.compiler import load_preset

    return load_preset(name if name is not None else args.preset, getattr(args, "preset_path", []) or [])


_LOCATED = re.compile(r"^\S+:\d+(:\d+)?: ")


def located(line: str) -> bool:
    """Lines that already start with file:line speak for themselves."""
    return bool(_LOCATED.match(line))


def say(text: str) -> None:
    """Print a line to stdout; a file name the output encoding cannot show is escaped, not fatal."""
    try:
        print(text)
    except UnicodeEncodeError:
        print(text.encode("ascii", "backslashreplace").decode("ascii"))


def settings_for(args: argparse.Namespace, preset_settings: Any, require: bool,
                 without_file_hint: str = "pass --settings FILE") -> Any:
    """Resolve ``--settings`` against the preset; every problem of the file is reported at once.

    ``without_file_hint`` is added when no file was given and something is
    missing: it names what *this* command accepts instead.
    """
    supplied: dict[str, Any] = {}
    where: dict[str, str] = {}
    if args.settings:
        supplied, where = load_settings_file(args.settings)
    try:
        return resolve(preset_settings, supplied, require=require, where=where)
    except SettingsError as exc:
        if args.settings:
            raise
        raise SettingsError([*exc.problems, without_file_hint]) from None


def emit(outcome: Outcome, out: TextIO | None = None) -> None:
    """One outcome as one line of JSON, always valid UTF-8 whatever the stream's encoding."""
    out = out or sys.stdout  # looked up per call, so redirection and capture work
    data = outcome.to_dict()
    if _writes_strict_utf8(out):
        try:
            out.write(json.dumps(data, ensure_ascii=False) + "\n")
        except UnicodeEncodeError:
            # A lone surrogate (from a "\\ud800" escape in the input): escape everything
            # non-ASCII; still one line of JSON.
            out.write(json.dumps(data, ensure_ascii=True) + "\n")
    else:
        # Another encoding (LANG=C, PYTHONIOENCODING=latin-1) or a lenient error handler
        # (surrogateescape) would write bytes that are not UTF-8: ASCII escapes are both.
        out.write(json.dumps(data, ensure_ascii=True) + "\n")
    out.flush()


def _writes_strict_utf8(out: TextIO) -> bool:
    encoding = (getattr(out, "encoding", None) or "utf-8").lower().replace("-", "").replace("_", "")
    return encoding == "utf8" and (getattr(out, "errors", None) or "strict") == "strict"


def check_state_dir(state: str) -> None:
    """Fail before the first event, not after, when the state directory is unusable."""
    path = Path(state)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--state {state}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".write-test"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--state {state}: cannot be used as the state directory ({exc.strerror or type(exc).__name__})") from None
    try:
        open_state(path).close()
    except OSError as exc:
        raise UsageError(f"--state {state}: {exc.strerror or type(exc).__name__}") from None
