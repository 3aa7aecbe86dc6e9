"""The consent gate: an event goes out only if every required category is granted.

Consent arrives in three shapes in the wild (``context.consent``):

* ``{"canonical": {"marketing": true}}`` — the preferred shape;
* ``{"marketing": true}`` — flat legacy booleans;
* ``{"categories": ["marketing", "C0004"]}`` — raw codes from a consent tool.

Missing or unreadable consent means *no* consent: the gate fails closed.
Only a JSON ``true`` grants a boolean category, so ``"false"`` or ``1``
never counts as consent by accident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..language.records import record


@record
class ConsentGate:
    required: tuple[str, ...]
    # category -> raw codes that also grant it (lower-cased)
    aliases: Mapping[str, frozenset[str]]

    @classmethod
    def build(cls, required: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None) -> ConsentGate:
        table = {cat: frozenset(c.lower() for c in [cat, *(aliases or {}).get(cat, [])]) for cat in required}
        return cls(tuple(required), table)

    def missing(self, event: Mapping[str, Any]) -> list[str]:
        """The required categories this event has not granted (empty means consent)."""
        context = event.get("context")
        consent = context.get("consent") if isinstance(context, dict) else None
        if not isinstance(consent, dict):
            return list(self.required)
        canonical = consent.get("canonical")
        if isinstance(canonical, dict):
            return [c for c in self.required if canonical.get(c) is not True]
        codes = consent.get("categories")
        granted_codes = {c.lower() for c in codes if isinstance(c, str)} if isinstance(codes, list) else set()
        return [c for c in self.required if consent.get(c) is not True and not (self.aliases[c] & granted_codes)]

    def denied(self, event: Mapping[str, Any]) -> bool:
        """True only when a required category is explicitly refused (``false``), not merely absent.

        Used for identify calls: traits of a person who said no are not kept,
        while an identify without consent data is still remembered, since the
        gate is applied again to the lead event that follows.
        """
        return bool(self.refused(event))

    def refused(self, event: Mapping[str, Any]) -> list[str]:
        """The required categories this event explicitly refuses (``false``)."""
        context = event.get("context")
        consent = context.get("consent") if isinstance(context, dict) else None
        if not isinstance(consent, dict):
            return []
        canonical = consent.get("canonical")
        source = canonical if isinstance(canonical, dict) else consent
        return [c for c in self.required if source.get(c) is False]
