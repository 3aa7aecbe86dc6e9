"""What the CLI itself writes on stderr (hints, the summary, failures), as text or JSON lines, and the log options.

Apart from :mod:`.log_handlers` (the engine's records to stderr, masked):
that one imports :mod:`logging`, which a dry run never needs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

LOG_FORMATS = ("text", "json")


def utc_time(seconds: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds; datetime is imported by the first line logged, not by every start."""
    from datetime import UTC, datetime

    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_line(level: str, message: str, logger: str = "engine.cli", **fields: Any) -> str:
    """A line shaped like :class:`JsonFormatter`'s, for what the CLI itself reports (summary, hints)."""
    entry: dict[str, Any] = {
        "time": utc_time(),
        "level": level,
        "logger": logger,
        "message": message,
        **fields,
    }
    return json.dumps(entry, ensure_ascii=False)


def wants_json(argv: list[str]) -> bool:
    """Whether ``argv`` asks for ``--log-format json``, read before argparse has run.

    Argparse's own errors come before any option is parsed; a log shipper
    still needs them as JSON. Abbreviations argparse accepts count too.
    """
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        name, equals, value = arg.partition("=")
        given = value if equals else (argv[i + 1] if i + 1 < len(argv) else "")
        if len(name) >= 5 and "--log-format".startswith(name) and given == "json":
            return True
    return False


def say_on_stderr(log_format: str, line: str, level: str = "info", **fields: Any) -> None:
    """A line the CLI itself writes on stderr: as it is, or as one JSON object under ``--log-format json``."""
    if log_format == "json":
        line = json_line(level, line.removeprefix("signal-engine: "), **fields)
    print(line, file=sys.stderr, flush=True)


def add_logging_options(parser: Any) -> None:
    parser.add_argument("--verbose", action="store_true", help="log every delivery attempt to stderr")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text for people, json for one JSON object per line (default: %(default)s)",
    )
