"""Identity memory, the store half: where remembered identify traits live.

The pipeline decides *what* is remembered (declared traits only, consent,
the owner of a shared anonymous id); a store only keeps it, bounded. This
module is the interface and the in-memory store. It does no I/O, so the pure
pipeline may use it for dry runs and golden cases; the SQLite store (and a
distributed one) implement the same three calls.

Bounds, declared in the preset's ``identity:`` section:

* **age** (``ttl_days``): an entry not seen (identified or recalled) for
  that long is gone;
* **total bytes** (``max_bytes``): past it, the least recently seen entries
  are forgotten first. Counted as the UTF-8 bytes of the id, the owner and
  the traits as JSON (:func:`entry_bytes`), the same way in every store;
* the size of each trait value is capped before it reaches a store (the
  pipeline's job, ``max_trait_bytes``).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

from ..language.model import (
    DEFAULT_IDENTITY_MAX_BYTES,
    DEFAULT_IDENTITY_TTL_DAYS,
    IdentitySpec,
)


class Slot(NamedTuple):
    """Where traits are remembered: the id field (``userId``...) and its value."""

    kind: str
    ident: str
    # True for an id several people may share (a device's anonymousId): an
    # entry owned by someone else is then replaced, never merged into.
    exclusive: bool = False


@dataclass(frozen=True)
class Remembered:
    traits: Mapping[str, Any]
    # The userId these traits were seen with, so that an anonymousId shared by
    # two people (a shared device) never hands one user's traits to another.
    owner: str | None


@dataclass(frozen=True)
class IdentityLimits:
    ttl_seconds: float = DEFAULT_IDENTITY_TTL_DAYS * 86400.0
    max_bytes: int = DEFAULT_IDENTITY_MAX_BYTES

    @classmethod
    def of(cls, spec: IdentitySpec) -> "IdentityLimits":
        return cls(spec.ttl_days * 86400.0, spec.max_bytes)


class IdentityStore(Protocol):
    """Remembered traits per (id field, id). Each call is atomic on its own.

    A store for several processes (SQLite, Redis) must apply ``merge`` as one
    read-modify-write, so two processes identifying the same person at once
    both land.
    """

    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        """Merge ``traits`` into each slot's entry (new values win) as :func:`merged` says."""

    def recall(self, kind: str, ident: str) -> Remembered | None:
        """The live entry, or None (never remembered, forgotten, expired or evicted)."""

    def forget(self, slots: Sequence[Slot]) -> None:
        """Drop these entries (the person refused consent)."""


def merged(existing: Remembered | None, traits: Mapping[str, Any], owner: str | None, exclusive: bool) -> Remembered:
    """The one merge rule every store applies.

    A new entry, or an exclusive slot owned by another person, starts afresh
    with ``owner``; otherwise the traits are merged (new values win) and the
    owner is set if it was unknown.
    """
    if existing is None or (exclusive and existing.owner not in (None, owner)):
        return Remembered(dict(traits), owner)
    return Remembered({**existing.traits, **traits}, existing.owner or owner)


def traits_json(traits: Mapping[str, Any]) -> str:
    """The stored form of traits; values a host passed that JSON cannot hold are kept as text."""
    return json.dumps(traits, ensure_ascii=False, separators=(",", ":"), default=str)


def entry_bytes(kind: str, ident: str, owner: str | None, traits_text: str) -> int:
    """The size an entry counts against ``max_bytes``: the same figure in every store."""
    return sum(len(s.encode("utf-8", "surrogatepass")) for s in (kind, ident, owner or "", traits_text))


@dataclass
class _Entry:
    remembered: Remembered
    size: int
    seen: float = field(default=0.0)


class MemoryIdentityStore:
    """Least recently seen first out, bounded by ``limits``; one per pipeline, nothing global."""

    def __init__(self, limits: IdentityLimits | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits or IdentityLimits()
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self.bytes_used = 0

    def __len__(self) -> int:
        return len(self._entries)

    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        now = self._clock()
        self._expire(now)
        for slot in slots:
            key = (slot.kind, slot.ident)
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes_used -= old.size
            new = merged(old.remembered if old else None, traits, owner, slot.exclusive)
            size = entry_bytes(slot.kind, slot.ident, new.owner, traits_json(new.traits))
            self._entries[key] = _Entry(new, size, now)
            self.bytes_used += size
        while self.bytes_used > self.limits.max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.bytes_used -= evicted.size

    def recall(self, kind: str, ident: str) -> Remembered | None:
        key = (kind, ident)
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now - entry.seen > self.limits.ttl_seconds:
            self._drop(key)
            return None
        entry.seen = now
        self._entries.move_to_end(key)
        return entry.remembered

    def forget(self, slots: Sequence[Slot]) -> None:
        for slot in slots:
            self._drop((slot.kind, slot.ident))

    def items(self) -> Iterable[tuple[tuple[str, str], Remembered]]:
        """Every live entry, least recently seen first (for tests and a one-off export)."""
        return [(key, entry.remembered) for key, entry in self._entries.items()]

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes_used -= entry.size

    def _expire(self, now: float) -> None:
        # Entries are kept in order of last sight, so the expired ones are at the front.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.seen <= self.limits.ttl_seconds:
                return
            self._drop(key)
