"""What every command shares: one-line errors, output, settings and the state directory."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from ..language.settings import SettingsError, load_settings_file, resolve
from ..outcome import Outcome, outcome_json, printed_line


class UsageError(Exception):
    """A one-line problem with what the user asked for."""


def add_preset_path_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of presets (repeatable), searched for preset names before "
        "$SIGNAL_ENGINE_PRESET_PATH and the built-in presets",
    )


def load_preset_arg(args: argparse.Namespace, name: str | None = None) -> Any:
    """The preset named on the command line, looked up in --preset-path folders first."""
    from ..compile.compiler import load_preset

    return load_preset(name if name is not None else args.preset, getattr(args, "preset_path", []) or [])


LOCATION = re.compile(r"^(?P<file>\S+?):(?P<line>\d+)(?::(?P<column>\d+))?: ")


def located(line: str) -> bool:
    """Lines that already start with file:line speak for themselves."""
    return bool(LOCATION.match(line))


def say(text: str) -> None:
    """Print a line to stdout; a file name the output encoding cannot show is escaped, not fatal."""
    try:
        print(text)
    except UnicodeEncodeError:
        print(text.encode("ascii", "backslashreplace").decode("ascii"))


def settings_for(
    args: argparse.Namespace, preset_settings: Any, require: bool, without_file_hint: str = "pass --settings FILE"
) -> Any:
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


def emit(outcome: Outcome, out: TextIO | None = None, *, flush: bool = True) -> None:
    """Write one outcome as one line of compact JSON.

    ``flush=False`` leaves flushing to the stream's buffer, for input read
    from a regular file, where nobody watches the lines one by one.
    """
    out = out or sys.stdout  # looked up per call, so redirection and capture work
    out.write(printed_line(outcome, getattr(out, "encoding", None)) + "\n")
    if flush:
        out.flush()


def outcome_line(data: Any, out: TextIO | None = None) -> str:
    """``data`` as one line of JSON text that ``out`` can encode."""
    return outcome_json(data, getattr(out, "encoding", None)) + "\n"


def add_reset_state_option(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--reset-state",
        action="store_true",
        help="move a state file that is refused (empty, not ours, or of a newer version) aside to "
        "<name>.refused-<UTC time> and start afresh",
    )


def check_state_dir(state: str, *, reset: bool = False, queue: bool = False) -> None:
    """Fail before the first event, not after, when the state directory is unusable.

    ``reset`` (``--reset-state``) moves a refused state file aside first, and
    says so; ``queue`` checks ``serve``'s ``queue.db`` too.
    """
    import os
    import tempfile

    from ..state.backend import open_state  # only commands that keep state
    from ..state.sqlite.file_marks import check_file, move_aside
    from ..state.sqlite.queue import QUEUE_DB, QUEUE_FILE

    path = Path(state)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--state {state}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # A probe of this process's own: two runs starting on one directory must not unlink each other's.
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"--state {state}: cannot be used as the state directory ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        backend = open_state(path, reset=reset)
        moved = [(path / "state.db", getattr(backend, "moved_aside", None))]
        backend.close()
        if queue:
            moved.append((path / QUEUE_DB, move_aside(path / QUEUE_DB, QUEUE_FILE) if reset else None))
            check_file(path / QUEUE_DB, QUEUE_FILE)
    except OSError as exc:
        raise UsageError(f"--state {state}: {exc.strerror or type(exc).__name__}") from None
    for refused, aside in moved:
        if aside is not None:
            print(
                f"signal-engine: --reset-state: {refused} was refused; moved it aside to {aside} and started afresh",
                file=sys.stderr,
                flush=True,
            )
