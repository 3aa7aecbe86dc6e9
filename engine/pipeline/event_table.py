"""The first filter: which events a preset takes, decided by a dict lookup.

Most traffic is anonymous page views that every preset drops, so this runs
before anything else and costs one hash lookup per event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")


@dataclass(frozen=True)
class EventRoute:
    """Where a taken event goes: the action to run and its per-event values."""

    name: str
    action: str
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EventTable:
    track: Mapping[str, EventRoute]  # track name or alias -> route
    by_type: Mapping[str, EventRoute]  # non-track type -> route

    @classmethod
    def build(cls, spec: Mapping[str, Any]) -> EventTable:
        track: dict[str, EventRoute] = {}
        for name, entry in (spec.get("track") or {}).items():
            if entry["action"] == "drop":
                continue
            route = EventRoute(name, entry["action"], dict(entry.get("values") or {}))
            for key in (name, *entry.get("aliases", [])):
                track[key] = route
        by_type = {
            t: EventRoute(t, spec[t]["action"], dict(spec[t].get("values") or {}))
            for t in EVENT_TYPES
            if t != "track" and t in spec and spec[t]["action"] != "drop"
        }
        return cls(track, by_type)

    def route(self, event_type: str, name: str | None) -> EventRoute | None:
        if event_type == "track":
            return self.track.get(name) if name is not None else None
        return self.by_type.get(event_type)
