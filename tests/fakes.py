"""Test doubles shared by several test modules."""

from __future__ import annotations

import asyncio

# The product page, "Example: Demo Requested" -> "Outreach payload sent by Signal", written out by hand.
SEED_DEMO_REQUESTED_PAYLOAD = {
    "data": {
        "type": "prospect",
        "attributes": {
            "emails": ["jane.doe@acme.com"],
            "firstName": "Jane",
            "lastName": "Doe",
            "name": "Jane Doe",
            "title": "Head of Growth",
            "occupation": "Head of Growth",
            "company": "Acme Inc",
            "mobilePhones": ["+447700900123"],
            "tags": ["Signal", "demo-request"],
        },
    }
}


class FakeTime:
    """A monotonic clock that moves only when someone sleeps on it."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        # Like a real clock, time moves on a little even for a tiny sleep; a
        # wait below the float resolution at this magnitude would otherwise
        # never elapse and the limiter would spin.
        self.now += max(0.0, delay) + 1e-9
        await asyncio.sleep(0)
