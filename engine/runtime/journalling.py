"""What the delivery journal answers, as an outcome: an event delivered before is not sent again.

The engine asks the journal before sending and records after; an event it
already holds ends as ``delivered`` with the time it was, and no request.
"""

from __future__ import annotations

import time
from typing import Any

from .. import outcome as oc
from ..outcome import Outcome
from ..pipeline.prepare import Prepared


def already_delivered(prepared: Prepared, since: float, request: dict[str, Any]) -> Outcome:
    """The outcome of an event the journal says was delivered at ``since``: delivered, not sent again."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    return Outcome(
        prepared.index,
        prepared.message_id,
        oc.DELIVERED,
        detail=f"already delivered at {when} (delivery journal); not sent again",
        request=request,
        attempts=0,
    )
