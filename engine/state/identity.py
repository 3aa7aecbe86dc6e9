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

The in-memory store (a dry run, a ``Pipeline`` without a state store) has a
fourth bound, in bytes of *process* memory (``memory_bytes``, default
:data:`DEFAULT_MEMORY_BYTES`): each entry counts what it really holds in the
interpreter (its key, traits text and owner objects, plus the fixed cost of
its slot in the ordered table, :data:`ENTRY_OVERHEAD`), not only its data.
Entries are kept compact for the same reason: traits as one JSON string,
parsed again on recall. Past the bound, the least recently seen go first.
"""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

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


# What the in-memory store may hold, in bytes of process memory: a dry run of a
# million identify calls stays well under 300 MB of resident memory.
DEFAULT_MEMORY_BYTES = 128 * 1024 * 1024


# The identity memory every integration of a service reads and writes (an identify remembered once for all);
# a one-preset run keeps its own, under the preset's name.
SHARED_IDENTITY = "shared"


@dataclass(frozen=True)
class IdentityLimits:
    ttl_seconds: float = DEFAULT_IDENTITY_TTL_DAYS * 86400.0
    max_bytes: int = DEFAULT_IDENTITY_MAX_BYTES
    # Only the in-memory store has this bound (the others keep entries on disk or in Redis).
    memory_bytes: int = DEFAULT_MEMORY_BYTES

    @classmethod
    def of(cls, spec: IdentitySpec) -> IdentityLimits:
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


class _Entry:
    """One remembered id, compact: the traits stay JSON text until recalled."""

    __slots__ = ("owner", "process_size", "seen", "size", "traits_text")

    def __init__(self, traits_text: str, owner: str | None, size: int, process_size: int, seen: float) -> None:
        self.traits_text = traits_text
        self.owner = owner
        self.size = size
        self.process_size = process_size
        self.seen = seen

    def remembered(self) -> Remembered:
        return Remembered(json.loads(self.traits_text), self.owner)


# The fixed process memory of one entry beyond its strings: the _Entry (with its
# GC header), its float and int fields, and its share of the ordered table (a
# hash slot, an entry, a list node; the table is up to about 3 slots per entry
# between two resizes). Checked against tracemalloc in tests/test_memory_bounds.py.
ENTRY_OVERHEAD = 320


def _key(kind: str, ident: str) -> str:
    # One string, not a tuple of two: a third less memory per entry. The id
    # field's name never holds a NUL (it is a preset's field name).
    return f"{kind}\0{ident}"


class MemoryIdentityStore:
    """Least recently seen first out, bounded by ``limits`` (data and process bytes); one per pipeline."""

    def __init__(self, limits: IdentityLimits | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits or IdentityLimits()
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes_used = 0  # data bytes, counted as every store counts them (entry_bytes)
        self.process_bytes = 0  # what the entries hold in this process

    def __len__(self) -> int:
        return len(self._entries)

    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        now = self._clock()
        self._expire(now)
        for slot in slots:
            key = _key(slot.kind, slot.ident)
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes_used -= old.size
                self.process_bytes -= old.process_size
            new = merged(old.remembered() if old else None, traits, owner, slot.exclusive)
            text = traits_json(new.traits)
            size = entry_bytes(slot.kind, slot.ident, new.owner, text)
            process_size = (
                ENTRY_OVERHEAD
                + sys.getsizeof(key)
                + sys.getsizeof(text)
                + (sys.getsizeof(new.owner) if new.owner is not None else 0)
            )
            self._entries[key] = _Entry(text, new.owner, size, process_size, now)
            self.bytes_used += size
            self.process_bytes += process_size
        while self._entries and (
            self.bytes_used > self.limits.max_bytes or self.process_bytes > self.limits.memory_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self.bytes_used -= evicted.size
            self.process_bytes -= evicted.process_size

    def recall(self, kind: str, ident: str) -> Remembered | None:
        key = _key(kind, ident)
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        if now - entry.seen > self.limits.ttl_seconds:
            self._drop(key)
            return None
        entry.seen = now
        self._entries.move_to_end(key)
        return entry.remembered()

    def forget(self, slots: Sequence[Slot]) -> None:
        for slot in slots:
            self._drop(_key(slot.kind, slot.ident))

    def items(self) -> Iterable[tuple[tuple[str, str], Remembered]]:
        """Every live entry, least recently seen first (for tests and a one-off export)."""
        return [
            (tuple(key.split("\0", 1)), entry.remembered())  # type: ignore[misc]
            for key, entry in self._entries.items()
        ]

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes_used -= entry.size
            self.process_bytes -= entry.process_size

    def _expire(self, now: float) -> None:
        # Entries are kept in order of last sight, so the expired ones are at the front.
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.seen <= self.limits.ttl_seconds:
                return
            self._drop(key)
