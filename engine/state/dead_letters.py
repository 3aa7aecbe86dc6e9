"""Dead letters: events that could not be delivered, kept for replay.

Nothing is lost: an event whose retries ran out, or that waits on a
re-authorisation, is written here with the masked request, the last
response, the cause and the attempt count. The request body is kept whole
(it holds no credentials; the auth header is masked and re-applied on
replay).

Every operation touches one letter and is atomic, so a ``run`` adding
letters and a ``dlq replay`` removing them can share a store without one
losing the other's work (there is no read-everything-then-rewrite step).

Nor is anything read whole to be listed or replayed: :meth:`pages` hands
the letters out a page at a time, so ``dlq list`` and ``dlq replay`` use the
same memory for 30 letters as for 30,000.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..outcome import Outcome

# Letters read at once by ``pages``: about 2 MB of letters with typical requests.
PAGE_SIZE = 500


class DeadLetterStore(Protocol):
    def add(self, entry: dict[str, Any]) -> None:
        """Keep a letter. A letter with the same ``preset`` and ``key`` (the same event) is replaced, keeping its id."""

    def entries(self, preset: str | None = None) -> list[dict[str, Any]]:
        """The letters, oldest first (of one preset, when named)."""

    def pages(self, preset: str | None = None, size: int = PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
        """The letters there are when the first page is read, oldest first, ``size`` at a time.

        Letters removed or updated meanwhile are seen as they are when their
        page is read (or not at all); letters added meanwhile are not seen.
        """

    def count(self, preset: str | None = None) -> int:
        """How many letters there are (of one preset, when named), without reading them."""

    def remove(self, letter_id: str) -> None:
        """Forget one letter (it was delivered). Removing a letter that is gone is not an error."""

    def update(self, entry: dict[str, Any]) -> None:
        """Replace the letter with ``entry["id"]``, if it is still there (a replay that failed again)."""

    def discard(self, preset: str, key: str) -> None:
        """Forget the letter of the event with this journal key, if there is one: it was delivered since
        (a rerun sent it). Losing this write costs nothing but a stale letter, which replay removes."""


def filed_under(entry: Mapping[str, Any]) -> str:
    """The name a letter is kept under: a service integration's (``filed_under``), else its preset's."""
    return str(entry.get("filed_under") or entry.get("preset"))


def entry_for(
    preset: str,
    action: str,
    outcome: Outcome,
    request: dict[str, Any],
    key: str | None = None,
    context: dict[str, Any] | None = None,
    *,
    integration: str | None = None,
    filed_under: str | None = None,
) -> dict[str, Any]:
    """``integration`` names the integration; ``filed_under`` is the name a service integration keeps its
    letters under (its own, so that two integrations of one preset never share or replace each other's
    letters); without it a letter is kept under its preset. ``request`` is the event's *first* request
    (masked), not the last one tried: a
    replay must start from the create, so that an upsert runs whole again.
    ``key`` is the event's journal key (see :func:`engine.state.journal.event_key`).
    ``context`` is what the action's later expressions read besides the body
    (the event's ``traits`` and its row's ``values``, secrets scrubbed): an
    upsert's lookup, key and update are rebuilt from it on replay."""
    entry = {
        "id": uuid.uuid4().hex,
        **({"integration": integration} if integration is not None else {}),
        **({"filed_under": filed_under} if filed_under and filed_under != preset else {}),
        "preset": preset,
        "action": action,
        "key": key,
        "dead_lettered_at": int(time.time()),
        "index": outcome.index,
        "messageId": outcome.message_id,
        "cause": outcome.cause,
        "detail": outcome.detail,
        "attempts": outcome.attempts,
        "request": request,
        "last_request": outcome.request,
        "last_response": outcome.response,
    }
    if context is not None:
        entry["context"] = context
    return entry


class MemoryDeadLetters:
    """For an engine without a state directory, and for tests."""

    def __init__(self) -> None:
        self._entries: list[dict[str, Any]] = []

    def add(self, entry: dict[str, Any]) -> None:
        key = entry.get("key")
        for i, old in enumerate(self._entries):
            if key is not None and old.get("key") == key and filed_under(old) == filed_under(entry):
                self._entries[i] = {**entry, "id": old.get("id")}
                return
        self._entries.append(dict(entry))

    def entries(self, preset: str | None = None) -> list[dict[str, Any]]:
        return [dict(e) for e in self._entries if preset is None or filed_under(e) == preset]

    def pages(self, preset: str | None = None, size: int = PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
        yield from chunked(self.entries(preset), size)  # already in memory: a copy costs no more

    def count(self, preset: str | None = None) -> int:
        return sum(1 for e in self._entries if preset is None or filed_under(e) == preset)

    def remove(self, letter_id: str) -> None:
        self._entries = [e for e in self._entries if e.get("id") != letter_id]

    def update(self, entry: dict[str, Any]) -> None:
        for i, old in enumerate(self._entries):
            if old.get("id") == entry.get("id"):
                self._entries[i] = dict(entry)
                return

    def discard(self, preset: str, key: str) -> None:
        self._entries = [e for e in self._entries if not (filed_under(e) == preset and e.get("key") == key)]


class Removes(Protocol):
    def remove(self, letter_id: str) -> None: ...


def delete_letters(store: Removes, pages: Iterable[list[dict[str, Any]]], ids: Collection[str]) -> list[str]:
    """Remove the letters with these ``ids`` among ``pages`` (one integration's letters); the ids removed.

    Only letters found among ``pages`` are removed, so naming another
    integration's letter (or one a replay removed meanwhile) deletes nothing;
    the caller reports those ids as not found. This is ``dlq delete`` and the
    console's delete: the same operation, never a different path to the store.
    """
    wanted, removed = set(ids), []
    for page in pages:
        for entry in page:
            letter_id = str(entry.get("id"))
            if letter_id in wanted and letter_id not in removed:
                store.remove(letter_id)
                removed.append(letter_id)
    return removed


def chunked(letters: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(letters), size):
        yield letters[start : start + size]


def read_legacy_file(path: Path) -> list[dict[str, Any]]:
    """The letters of a ``dead-letters.jsonl`` from before the state database (imported once)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a torn last line after a crash must not block the rest
        if isinstance(item, dict):
            out.append(item)
    return out
