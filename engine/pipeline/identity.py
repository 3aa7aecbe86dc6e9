"""Identity: which traits belong to the person behind an event.

``identify`` calls carry the traits; the lead events that follow usually do
not. The memory joins them, keyed by ``userId`` and ``anonymousId``, and is
bounded so that a long-running host does not grow without limit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

DEFAULT_MEMORY_LIMIT = 10_000


@dataclass
class _Remembered:
    traits: dict[str, Any]
    # The userId these traits were seen with, so that an anonymousId shared by
    # two people (a shared device) never hands one user's traits to another.
    owner: str | None


class IdentityMemory:
    """Remembered identify traits per userId / anonymousId, least recently used first out.

    Only declared traits are stored, so nothing a preset will never send is
    kept in memory. One instance belongs to one pipeline; there is no global state.
    """

    def __init__(self, keys: Iterable[str] = ("userId", "anonymousId"), limit: int = DEFAULT_MEMORY_LIMIT,
                 trait_names: Iterable[str] | None = None) -> None:
        self.keys = tuple(keys)
        self.limit = limit
        self.trait_names = frozenset(trait_names) if trait_names is not None else None
        self._entries: OrderedDict[tuple[str, str], _Remembered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, event: Mapping[str, Any], traits: Mapping[str, Any]) -> None:
        """Merge an identify call's traits into what is known for its ids."""
        kept = {k: v for k, v in traits.items() if self.trait_names is None or k in self.trait_names}
        if not kept:
            return
        user_id = _id(event.get("userId"))
        for key in self.keys:
            ident = _id(event.get(key))
            if ident is None:
                continue
            slot = (key, ident)
            entry = self._entries.get(slot)
            if entry is None or (key == "anonymousId" and entry.owner not in (None, user_id)):
                # A different person on the same anonymous id: start afresh.
                entry = _Remembered({}, user_id)
            entry.traits.update(kept)
            entry.owner = entry.owner or user_id
            self._entries[slot] = entry
            self._entries.move_to_end(slot)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def forget(self, event: Mapping[str, Any]) -> None:
        """Drop what is remembered for this event's ids (the person withdrew consent)."""
        for key in self.keys:
            ident = _id(event.get(key))
            if ident is not None:
                self._entries.pop((key, ident), None)

    def recall(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Remembered traits for this event's ids; the userId's win over the anonymousId's."""
        user_id = _id(event.get("userId"))
        merged: dict[str, Any] = {}
        for key in sorted(self.keys, key=lambda k: k == "userId"):  # userId last, so it wins
            ident = _id(event.get(key))
            if ident is None:
                continue
            entry = self._entries.get((key, ident))
            if entry is None:
                continue
            if key == "anonymousId" and user_id is not None and entry.owner not in (None, user_id):
                continue
            self._entries.move_to_end((key, ident))
            merged.update(entry.traits)
        return merged

    def snapshot(self) -> list[dict[str, Any]]:
        """A serialisable copy, so a host can persist identity across restarts."""
        return [{"key": k, "id": i, "owner": e.owner, "traits": e.traits} for (k, i), e in self._entries.items()]

    def restore(self, entries: Iterable[Mapping[str, Any]]) -> None:
        for item in entries:
            try:
                slot = (str(item["key"]), str(item["id"]))
                traits = dict(item["traits"])
            except (KeyError, TypeError, ValueError):
                continue
            owner = item.get("owner")
            self._entries[slot] = _Remembered(traits, owner if isinstance(owner, str) else None)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)


def merged_traits(event: Mapping[str, Any], remembered: Mapping[str, Any]) -> dict[str, Any]:
    """Remembered traits, then ``context.traits``, then ``traits``: what the event says itself wins."""
    merged = dict(remembered)
    context = event.get("context")
    for layer in (context.get("traits") if isinstance(context, dict) else None, event.get("traits")):
        if isinstance(layer, dict):
            # A null or blank value says nothing: it must not erase a remembered one.
            merged.update((k, v) for k, v in layer.items() if not _blank(v))
    return merged


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
