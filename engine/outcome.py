"""The one result every input event ends with.

Outcome kinds and drop reason codes are a public contract: hosts branch on
them and golden files pin them, so they are plain strings kept in one place.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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

# The ``cause`` of a failed or dead-lettered outcome: one constant each, and what it means in CAUSES below.
# Stopped runs (a signal, a closed stdout):
NOT_SENT = "not_sent"  # stopped before its first request left: the destination never saw it
INTERRUPTED = "interrupted"  # sent, but unanswered when the grace period ran out: it may have arrived
# Credentials:
AUTH_REJECTED = "auth_rejected"  # a 401 or 403 to a static credential (bearer, api_key, basic)
REAUTHORISATION_REQUIRED = "reauthorisation_required"  # the OAuth grant is gone: authorise again
AUTH_UNAVAILABLE = "auth_unavailable"  # no credential could be had for now (token endpoint down, throttled)
# The destination's answer, or no answer:
HTTP_STATUS_PREFIX = "http_"  # http_<status>: the status that ended the delivery (http_cause)
TIMEOUT = "timeout"  # no answer within delivery.timeout_seconds
CONNECTION = "connection"  # no connection, or it broke before an answer
TRANSPORT_ERRORS = (TIMEOUT, CONNECTION)  # the request got no answer: no status rule can match it
RESPONSE_TOO_LARGE = "response_too_large"  # an answer longer than delivery.max_response_bytes
# A request the preset could not build (a preset bug, or an event it did not foresee):
MAPPING_ERROR = "mapping_error"  # the mapping's JSONata failed on this event
OUTPUT_INVALID = "output_invalid"  # the mapped document breaks the action's output contract
EXPRESSION_LIMIT = "expression_limit"  # an expression stopped at one of limits.expression
FLOW_ERROR = "flow_error"  # a flow step's request could not be built
UPSERT_ERROR = "upsert_error"  # an upsert's lookup or update could not be built
UPSERT_NOT_FOUND = "upsert_not_found"  # a duplicate was reported, but the lookup found no record (yet)
BATCH_ERROR = "batch_error"  # a batch's body or item_error expression failed
ITEM_FAILED = "item_failed"  # the destination refused this event's item in a batch request
# The engine itself:
NOT_REPLAYABLE = "not_replayable"  # a dead letter that cannot be sent again as it is
POISON = "poison"  # a queued event whose delivery kept stopping its worker
INTERNAL_ERROR = "internal_error"  # a bug: an error nothing foresaw, caught so the event still has an outcome
UNKNOWN = "unknown"  # an ending with no request to judge it by; a bug if it is ever seen


def http_cause(status: int) -> str:
    """The cause of a delivery that a response status ended: ``http_429``."""
    return f"{HTTP_STATUS_PREFIX}{status}"


class Cause(NamedTuple):
    """What a cause means and what a user does about it; ``outcomes``: the kinds it comes with."""

    outcomes: tuple[str, ...]
    meaning: str
    remedy: str


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
_F, _D, _FD = (FAILED,), (DEAD_LETTERED,), (FAILED, DEAD_LETTERED)
_replay = "replay it with `signal-engine dlq replay`"
_resend = "it is not kept: send the event again once that is fixed"
_explain = "`signal-engine explain` the event to see the step that failed"
CAUSES: dict[str, Cause] = {
    NOT_SENT: Cause(
        _D,
        "The run was stopped before its first request left: the destination never saw it.",
        f"Nothing to fix; {_replay}.",
    ),
    INTERRUPTED: Cause(
        _D,
        "Sent, but unanswered when the run's grace period ran out: it may have arrived.",
        "Replay it with `signal-engine dlq replay`; if the first copy did arrive, a preset that upserts "
        "merges the second. A longer `--grace` lets the next stop wait for answers.",
    ),
    AUTH_REJECTED: Cause(
        _D,
        "A 401 or 403 to a static credential (bearer, api_key, basic).",
        f"Fix the credential in the settings, then {_replay}.",
    ),
    REAUTHORISATION_REQUIRED: Cause(
        _D,
        "The OAuth grant is gone: the token endpoint refused the refresh token (revoked, expired, another "
        "client_id), or there is none.",
        f"Authorise again (`signal-engine auth`, or the console's set-up page), then {_replay}.",
    ),
    AUTH_UNAVAILABLE: Cause(
        _D,
        "No credential could be had for now: the token endpoint was unreachable, throttled or failing, or "
        "the state could not save a rotated token.",
        f"Check the detail (network, disk space, the vendor's status), then {_replay}.",
    ),
    TIMEOUT: Cause(
        _FD,
        "No answer within `delivery.timeout_seconds`, on every attempt (or a response rule failed it at "
        "once): it may have arrived.",
        f"Check that the destination is reachable and answering; raise the timeout if it is slow; {_replay}.",
    ),
    CONNECTION: Cause(
        _FD,
        "No connection to the destination, or the connection broke before an answer.",
        f"Check the destination's URL (its settings), DNS, proxies and firewalls; {_replay}.",
    ),
    RESPONSE_TOO_LARGE: Cause(
        _FD,
        "The answer was longer than `delivery.max_response_bytes`; it was not read.",
        f"If such answers are expected, raise `delivery.max_response_bytes` in the preset; {_replay}.",
    ),
    MAPPING_ERROR: Cause(
        _F,
        "The mapping's JSONata failed on this event (a preset bug, or an event it did not foresee).",
        f"{_explain}, then fix the mapping; {_resend}.",
    ),
    OUTPUT_INVALID: Cause(
        _F,
        "The mapped document breaks the action's output contract (`output.schema`): a preset bug.",
        f"{_explain}; fix the mapping or the contract; {_resend}.",
    ),
    EXPRESSION_LIMIT: Cause(
        _F,
        "An expression stopped at one of `limits.expression` (time, depth, string or sequence length); the "
        "detail names which.",
        f"Check that the event is what you expect; simplify the expression or raise the limit; {_resend}.",
    ),
    FLOW_ERROR: Cause(
        _F,
        "A flow step's request could not be built: its `when`, `body`, URL or headers failed on this event "
        "or on an earlier step's answer.",
        f"{_explain}, then fix the step in the preset; {_resend}.",
    ),
    UPSERT_ERROR: Cause(
        _F,
        "An upsert's lookup or update could not be built, or its `found` expression failed.",
        f"Fix the action's `upsert` in the preset (the detail names the key); {_resend}.",
    ),
    UPSERT_NOT_FOUND: Cause(
        _D,
        "The destination reported a duplicate, but the lookup found no existing record, usually because "
        "its search lags behind its writes.",
        f"Wait a little, then {_replay}; if it recurs, check the upsert's lookup and `found` in the preset.",
    ),
    BATCH_ERROR: Cause(
        _F,
        "A batched action's `batch.body` or `batch.item_error` expression failed.",
        f"Fix the action's `batch` in the preset (the detail names the key); {_resend}.",
    ),
    ITEM_FAILED: Cause(
        _FD,
        "The request went as a batch, and the destination refused this event's item in it (dead-lettered "
        "when it kept asking for a retry until the attempts ran out).",
        f"Read the detail: fix the event's data, or {_replay} if the refusal was passing.",
    ),
    NOT_REPLAYABLE: Cause(
        _F,
        "A dead letter that cannot be sent again as it is (its action, URL or flow step no longer matches "
        "the preset or settings); it stays in the store.",
        "Replay it with the preset and settings it was recorded with, or `signal-engine dlq delete` it "
        "once handled by hand.",
    ),
    POISON: Cause(
        _D,
        "A queued event whose delivery stopped its worker `--max-deliveries` times (a crash, out of memory, "
        "a kill); it is not tried again.",
        f"Read the detail (the error it kept failing with) and fix that, then {_replay}.",
    ),
    INTERNAL_ERROR: Cause(
        _FD,
        "A bug: an error the engine did not foresee, caught so the event still has an outcome.",
        "Report it with the detail and the event (its secrets removed); a dead-lettered one can be replayed "
        "once fixed.",
    ),
    UNKNOWN: Cause(
        _FD,
        "An ending with no request to judge it by. It should never be seen.",
        "Report it as a bug, with the detail and the event (its secrets removed).",
    ),
}
# Families of causes: one entry per pattern (the ``<status>`` part is a regular expression here).
CAUSE_PATTERNS: dict[str, tuple[str, Cause]] = {
    f"{HTTP_STATUS_PREFIX}<status>": (
        rf"{HTTP_STATUS_PREFIX}[1-5][0-9][0-9]",
        Cause(
            _FD,
            "The destination answered with this status, and the preset's response rules (or the default: "
            "a 2xx delivers, a 408 or 5xx is retried, the rest fails) did not deliver it. Failed when "
            "the answer is final; dead-lettered when retries ran out or a renewed credential was refused too.",
            "Read `response` and `detail` (the preset's message for that answer): a 4xx usually means the "
            f"request is wrong for the destination (fix the data or the mapping); for a 429 or 5xx, {_replay} "
            "once the destination recovers.",
        ),
    ),
}


def is_cause(name: str) -> bool:
    """Whether ``name`` is a defined cause, or one of a family's (``http_404``)."""
    return name in CAUSES or any(re.fullmatch(pattern, name) for pattern, _ in CAUSE_PATTERNS.values())


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
    # Request lines for the record, masked, when a host sets them (the engine hands its trail of a delivery's
    # requests to its recorder instead: engine.delivery.trail); not in to_dict.
    exchanges: list[dict[str, Any]] | None = None
    integration: str | None = None  # the integration it belongs to (a service), named right after ``outcome``
    # The line as printed (``to_dict`` written by orjson, UTF-8, no newline), kept by the command that printed it
    # (:func:`printed_line`) so that the record writes these characters instead of serialising them again.
    # Public already: it holds what the printed line holds, nothing more.
    printed: str | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "messageId": self.message_id, "outcome": self.outcome}
        if self.integration is not None:
            out["integration"] = self.integration
        # Spelled out, not a loop over the names with getattr: this runs for every outcome printed or recorded.
        if self.reason is not None:
            out["reason"] = self.reason
        if self.cause is not None:
            out["cause"] = self.cause
        if self.detail is not None:
            out["detail"] = self.detail
        if self.warnings is not None:
            out["warnings"] = self.warnings
        if self.attempts is not None:
            out["attempts"] = self.attempts
        if self.request is not None:
            out["request"] = self.request
        if self.requests is not None:
            out["requests"] = self.requests
        if self.response is not None:
            out["response"] = self.response
        return out


def dropped(index: int | None, message_id: str | None, reason: str, detail: str) -> Outcome:
    return Outcome(index, message_id, DROPPED, reason=reason, detail=detail)


def printed_line(outcome: Outcome, encoding: str | None = None) -> str:
    """``outcome``'s line as :func:`outcome_json` writes it; kept on the outcome when orjson wrote it as UTF-8.

    Only that form is kept: the record puts it into its own JSON text as it
    is, and masks the whole text as it masks every other (ASCII escapes would
    hide a secret from that search).
    """
    data = outcome.to_dict()
    if encoding is not None and encoding.replace("-", "").replace("_", "").lower() != "utf8":
        return outcome_json(data, encoding)
    try:
        line: str = _orjson_dumps(data).decode("utf-8")
    except TypeError:
        return outcome_json(data, encoding)
    outcome.printed = line
    return line


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
