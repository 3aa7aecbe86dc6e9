"""The engine's log records to stderr, for commands that deliver, with every known secret masked.

Two formats: ``text`` for a person at a terminal, and ``json`` (one object
per line) for a log shipper. Both pass the finished line through the
redactor, so a secret that reaches a message (or an exception's text) is
masked before it is written anywhere. A module of its own, apart from
:mod:`.logs`, because it imports :mod:`logging`, which a dry run never needs.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from ..log_context import current_integration
from ..loggers import ROOT, package_logger
from ..redaction import Redactor
from .logs import utc_time


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
            "time": utc_time(record.created),
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


def configure_logging(redactor: Redactor, verbose: bool, log_format: str = "text") -> logging.Handler:
    """Send the engine's records to stderr in ``log_format``; INFO and up with ``verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redactor) if log_format == "json" else _RedactingFormatter(redactor))
    root = package_logger(ROOT)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    return handler
