"""Logging for commands that deliver: to stderr, with every known secret masked.

Two formats: ``text`` for a person at a terminal, and ``json`` (one object
per line) for a log shipper. Both pass the finished line through the
redactor, so a secret that reaches a message (or an exception's text) is
masked before it is written anywhere.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from ..log_context import current_integration
from ..redaction import Redactor

LOG_FORMATS = ("text", "json")

# The package's loggers all live below this one (``engine.delivery.sender`` …).
ROOT_LOGGER = "engine"


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__("signal-engine: %(message)s")
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        integration = _integration()
        if integration is not None:
            line = line.replace("signal-engine: ", f"signal-engine: [{integration}] ", 1)
        return self.redactor.redact(line)


def _integration() -> str | None:
    """The integration whose work logged this (a service; see :mod:`engine.log_context`)."""
    return current_integration.get()


# The attributes every LogRecord has; any other attribute came from a call's ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and the call's ``extra`` fields.

    Only the exception's type and first line are kept, never a traceback:
    frames can hold request bodies and headers.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        integration = _integration()
        if integration is not None:
            entry["integration"] = integration
        # What a call passed in ``extra=`` (event_index, attempt, status, cause...) becomes fields
        # of their own, so that a log shipper can filter on them without parsing the message.
        entry.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and k not in entry)
        if record.exc_info and record.exc_info[0] is not None:
            exc = record.exc_info[1]
            entry["exception"] = f"{record.exc_info[0].__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        return json.dumps(self.redactor.redact(entry), ensure_ascii=False)


def _utc_time(seconds: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds; datetime is imported by the first line logged, not by every start."""
    from datetime import UTC, datetime

    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_line(level: str, message: str, logger: str = "engine.cli", **fields: Any) -> str:
    """A line shaped like :class:`JsonFormatter`'s, for what the CLI itself reports (summary, hints)."""
    entry: dict[str, Any] = {
        "time": _utc_time(),
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


def configure_logging(redactor: Redactor, verbose: bool, log_format: str = "text") -> logging.Handler:
    """Send the engine's records to stderr in ``log_format``; INFO and up with ``verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redactor) if log_format == "json" else _RedactingFormatter(redactor))
    root = logging.getLogger(ROOT_LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    return handler


def add_logging_options(parser: Any) -> None:
    parser.add_argument("--verbose", action="store_true", help="log every delivery attempt to stderr")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text for people, json for one JSON object per line (default: %(default)s)",
    )
