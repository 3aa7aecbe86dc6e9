"""Is this input an event at all? Checked once, so later stages can trust the fields.

A malformed event must become ``invalid_event`` naming the field, never an
exception in the middle of a stream.
"""

from __future__ import annotations

from typing import Any

# The event types of the Segment spec (and of a preset's ``events:``).
EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
_OBJECT_FIELDS = ("traits", "properties", "context")
_ID_FIELDS = ("userId", "anonymousId", "messageId")


def shape_problem(event: Any) -> str | None:
    """Why ``event`` is not a usable event, or None."""
    if not isinstance(event, dict):
        return f"event must be a JSON object, got {_kind(event)}"
    if "type" not in event:
        return "field 'type' is missing"
    kind = event["type"]
    if kind not in EVENT_TYPES:
        got = "null" if kind is None else repr(kind)[:40]
        return f"field 'type' must be one of {', '.join(EVENT_TYPES)}, got {got}"
    if kind == "track":
        name = event.get("event")
        if not isinstance(name, str) or not name.strip():
            return "field 'event': a track event needs a non-empty event name"
    for field in _OBJECT_FIELDS:
        if field in event and event[field] is not None and not isinstance(event[field], dict):
            return f"field '{field}' must be an object, got {_kind(event[field])}"
    context = event.get("context")
    if isinstance(context, dict):
        for field in ("traits", "consent"):
            if field in context and context[field] is not None and not isinstance(context[field], dict):
                return f"field 'context.{field}' must be an object, got {_kind(context[field])}"
    for field in _ID_FIELDS:
        value = event.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            return f"field '{field}' must be a string, got {_kind(value)}"
    return None


def _kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
