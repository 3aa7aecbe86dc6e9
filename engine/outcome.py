"""The one result every input event ends with.

Outcome kinds and drop reason codes are a public contract: hosts branch on
them and golden files pin them, so they are plain strings kept in one place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

DROPPED = "dropped"
WOULD_SEND = "would_send"
DELIVERED = "delivered"
FAILED = "failed"
DEAD_LETTERED = "dead_lettered"

# Drop reasons (docs/architecture.md, "Public contracts").
EVENT_NOT_MAPPED = "event_not_mapped"
NO_CONSENT = "no_consent"
NOT_IDENTIFIED = "not_identified"
INVALID_EMAIL = "invalid_email"
INVALID_EVENT = "invalid_event"

DROP_REASONS = (EVENT_NOT_MAPPED, NO_CONSENT, NOT_IDENTIFIED, INVALID_EMAIL, INVALID_EVENT)

# Dead-letter causes of a run that was stopped (a signal, a closed stdout):
NOT_SENT = "not_sent"  # stopped before its first request left: the destination never saw it
INTERRUPTED = "interrupted"  # sent, but unanswered when the grace period ran out: it may have arrived
# A 401 or 403 to a static credential (bearer, api_key, basic): fix the setting, then replay.
AUTH_REJECTED = "auth_rejected"

# What each kind, reason and cause means: the one place the reference (docs/reference/outcomes.md) is written from.
OUTCOMES = {
    DELIVERED: "The destination accepted the request.",
    WOULD_SEND: "A dry run: the request that would have gone, masked; nothing was sent.",
    DROPPED: "Filtered out on purpose, before any request; `reason` says why. Not an error.",
    FAILED: "Could not be delivered and will not be retried (a mapping error, a rejected request); "
    "`cause` and `detail` say why.",
    DEAD_LETTERED: "Kept in the dead-letter store to replay later (retries ran out, a run was stopped, "
    "a credential was refused); `cause` says why.",
}
DROP_REASON_MEANINGS = {
    EVENT_NOT_MAPPED: "The preset maps no action for this event's type or name.",
    NO_CONSENT: "The event lacks the consent the preset requires.",
    NOT_IDENTIFIED: "The trait that identifies the person (the preset's required trait) is neither on the event "
    "nor remembered for its user.",
    INVALID_EMAIL: "The required trait is an email address, and the one given is not valid.",
    INVALID_EVENT: "Not a valid event (not an object, no `type`, a field of the wrong shape), or its required "
    "trait was refused by its normaliser.",
}
CAUSE_MEANINGS = {
    NOT_SENT: "The run was stopped before its first request left: the destination never saw it.",
    INTERRUPTED: "Sent, but unanswered when the run's grace period ran out: it may have arrived.",
    AUTH_REJECTED: "A 401 or 403 to a static credential (bearer, api_key, basic): fix the setting, then replay.",
}


@dataclass
class Outcome:
    """What happened to one event. ``to_dict`` is the JSON line the CLI prints.

    ``request`` is always the masked view; the sendable envelope never lives
    on an outcome, so printing or logging an outcome cannot leak a secret.
    """

    index: int | None
    message_id: str | None
    outcome: str
    reason: str | None = None
    detail: str | None = None
    cause: str | None = None
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    attempts: int | None = None
    warnings: list[str] | None = None  # e.g. an optional trait its normaliser refused, left out
    # A dry run of an action that sends more than one request before it knows an answer
    # (an upsert's lookup_first): every one of them, in the order they go; ``request`` stays the create.
    requests: list[dict[str, Any]] | None = None
    # Every request of the delivery in order (engine.delivery.trail), for the console; not in to_dict.
    exchanges: list[dict[str, Any]] | None = None
    integration: str | None = None  # the integration it belongs to (a service), named right after ``outcome``

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "messageId": self.message_id, "outcome": self.outcome}
        if self.integration is not None:
            out["integration"] = self.integration
        for key in ("reason", "cause", "detail", "warnings", "attempts", "request", "requests", "response"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def dropped(index: int | None, message_id: str | None, reason: str, detail: str) -> Outcome:
    return Outcome(index, message_id, DROPPED, reason=reason, detail=detail)


def outcome_json(data: Any, encoding: str | None = None) -> str:
    """``data`` as one line of compact JSON (no newline) that a stream in ``encoding`` can write.

    One form for every command that prints outcomes (``run``, ``serve``, ``worker``), so a
    consumer reads them all alike: UTF-8 as it is on a UTF-8 stream, ASCII escapes on any other.
    """
    try:
        line = _orjson_dumps(data).decode("utf-8")
    except TypeError:
        # A lone surrogate (from a "\\ud800" escape in the input), an integer
        # beyond 64 bits or a value orjson does not know: json writes it, as
        # escapes where needed; NaN and infinities become null, as orjson writes them.
        return json.dumps(_finite(data), ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=str)
    encoding = encoding or "utf-8"
    if encoding.replace("-", "").replace("_", "").lower() != "utf8" and not line.isascii():
        # Any other encoding (LANG=C, PYTHONIOENCODING=latin-1) would write bytes that are
        # not UTF-8, even where it can encode the character: ASCII escapes are both.
        return json.dumps(json.loads(line), ensure_ascii=True, separators=(",", ":"))
    return line


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _orjson_dumps(data: Any) -> Any:
    """orjson.dumps, imported by the first call: orjson's import (with uuid and platform) costs
    several milliseconds that a start that writes no outcome need not pay. The first call puts orjson's own function in this one's place."""
    global _orjson_dumps
    import orjson

    _orjson_dumps = orjson.dumps  # type: ignore[assignment]
    return orjson.dumps(data)
