"""Which event is this? The ``messageId`` rule, kept below every folder.

The pipeline names an event's outcome by it and the journal keys what it
remembers by it; both must read the id the same way, so the rule lives once,
beside the other primitives, where neither has to import the other.
"""

from __future__ import annotations

from typing import Any


def message_id_of(event: Any) -> str | None:
    """The event's ``messageId`` as text, or None when there is no usable one.

    A number counts (some senders send them); a boolean does not.
    """
    if not isinstance(event, dict):
        return None
    value = event.get("messageId")
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return None
