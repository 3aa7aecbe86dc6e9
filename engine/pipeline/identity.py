"""Identity: which traits belong to the person behind an event.

``identify`` calls carry the traits; the lead events that follow usually do
not. The memory joins them, keyed by ``userId`` and ``anonymousId``. This
module decides *what* is remembered and what a lookup returns; where it is
kept, and for how long, is an :class:`~engine.state.identity.IdentityStore`'s
job (in memory for dry runs and golden cases, the state database for an
engine with a state directory).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..language.model import DEFAULT_MAX_TRAIT_BYTES, IdentitySpec
from ..loggers import package_logger
from ..state.identity import IdentityLimits, IdentityStore, MemoryIdentityStore, Slot

# The id field several people may share (a device); its entries are owned by one userId.
SHARED_ID = "anonymousId"


class IdentityMemory:
    """Remembered identify traits per userId / anonymousId.

    Only declared traits are stored, each at most ``max_trait_bytes`` (as
    UTF-8 JSON), so nothing a preset will never send, and no megabyte blob,
    is ever kept. One instance belongs to one pipeline; there is no global state.
    """

    def __init__(
        self,
        keys: Iterable[str] = ("userId", "anonymousId"),
        trait_names: Iterable[str] | None = None,
        *,
        store: IdentityStore | None = None,
        max_trait_bytes: int = DEFAULT_MAX_TRAIT_BYTES,
    ) -> None:
        self.keys = tuple(keys)
        self._recall_order = tuple(sorted(self.keys, key=lambda k: k == "userId"))  # userId last, so it wins
        self.trait_names = frozenset(trait_names) if trait_names is not None else None
        self.store: IdentityStore = store if store is not None else MemoryIdentityStore()
        self.max_trait_bytes = max_trait_bytes

    @classmethod
    def for_preset(cls, spec: IdentitySpec, store: IdentityStore | None = None) -> IdentityMemory:
        """The memory a preset's ``identity:`` section declares; in memory unless a store is given."""
        if store is None:
            store = MemoryIdentityStore(IdentityLimits.of(spec))
        return cls(spec.remember, [t.name for t in spec.traits], store=store, max_trait_bytes=spec.max_trait_bytes)

    def remember(self, event: Mapping[str, Any], traits: Mapping[str, Any]) -> None:
        """Merge an identify call's traits into what is known for its ids."""
        self.remember_many([(event, traits)])

    def remember_many(self, calls: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
        """:meth:`remember` for several identify calls, in order; a store that can (Redis) merges them at once."""
        merges = []
        for event, traits in calls:
            kept = {
                k: v
                for k, v in traits.items()
                if (self.trait_names is None or k in self.trait_names) and self._small(k, v)
            }
            if not kept:
                continue
            slots = self._slots(event)
            if slots:
                merges.append((slots, kept, _id(event.get("userId"))))
        merge_many = getattr(self.store, "merge_many", None)
        if merge_many is not None and len(merges) > 1:
            merge_many(merges)
            return
        for slots, kept, owner in merges:
            self.store.merge(slots, kept, owner)

    def forget(self, event: Mapping[str, Any]) -> None:
        """Drop what is remembered for this event's ids (the person withdrew consent)."""
        slots = self._slots(event)
        if slots:
            self.store.forget(slots)

    def recall(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Remembered traits for this event's ids; the userId's win over the anonymousId's."""
        user_id = _id(event.get("userId"))
        merged: dict[str, Any] = {}
        for key in self._recall_order:
            ident = _id(event.get(key))
            if ident is None:
                continue
            try:
                entry = self.store.recall(key, ident)
            except OSError as exc:  # an unreadable store costs a join, never the event
                package_logger(__name__).error(  # on a dry run's path: logging loaded only here
                    "identity: could not read the identity memory (%s)", exc.strerror or type(exc).__name__
                )
                continue
            if entry is None:
                continue
            if key == SHARED_ID and user_id is not None and entry.owner not in (None, user_id):
                continue
            merged.update(entry.traits)
        return merged

    def prefetch(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Let a store that can (Redis) read what ``recall`` will ask for these events in one round trip."""
        prefetch = getattr(self.store, "prefetch", None)
        if prefetch is None:
            return
        slots = []
        for event in events:
            if isinstance(event, Mapping):
                for key in self._recall_order:
                    ident = _id(event.get(key))
                    if ident is not None:
                        slots.append((key, ident))
        try:
            prefetch(slots)
        except OSError as exc:  # each recall then asks on its own
            package_logger(__name__).warning(
                "identity: could not read the identity memory ahead (%s)", exc.strerror or type(exc).__name__
            )

    def _slots(self, event: Mapping[str, Any]) -> list[Slot]:
        slots = []
        for key in self.keys:
            ident = _id(event.get(key))
            if ident is not None:
                slots.append(Slot(key, ident, key == SHARED_ID))
        return slots

    def _small(self, name: str, value: Any) -> bool:
        """Within ``max_trait_bytes`` (about: a string counts its UTF-8 bytes and quotes): a trait value too large to remember is left out (the event still carries it)."""
        if isinstance(value, str):
            if len(value) * 4 + 2 <= self.max_trait_bytes:  # a fast yes for the usual short string
                return True
            size = len(value.encode("utf-8", "surrogatepass")) + 2
        else:
            size = len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
        if size <= self.max_trait_bytes:
            return True
        package_logger(__name__).info(
            "identity: trait %r (%d bytes) is over max_trait_bytes (%d) and is not remembered",
            name,
            size,
            self.max_trait_bytes,
        )
        return False


def merged_traits(event: Mapping[str, Any], remembered: Mapping[str, Any]) -> dict[str, Any]:
    """Remembered traits, then ``context.traits``, then ``traits``: what the event says itself wins."""
    merged = dict(remembered)
    context = event.get("context")
    for layer in (context.get("traits") if isinstance(context, dict) else None, event.get("traits")):
        if isinstance(layer, dict):
            # A null or blank value says nothing: it must not erase a remembered one.
            for k, v in layer.items():
                if v is None or ((type(v) is str or isinstance(v, str)) and not v.strip()):
                    continue
                merged[k] = v
    return merged


def _id(value: Any) -> str | None:
    if type(value) is str:
        return value.strip() or None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
