"""A state backend: where one engine's stores come from.

``Engine(state=DIR)`` opens the embedded SQLite backend on that directory;
``Engine()`` without one uses :class:`MemoryState` (nothing survives the
process). A distributed backend (Redis, :mod:`engine.state.redis`) implements
the same five calls, and may offer a sixth, ``rate_budget(name, rate,
capacity, clock)``: one rate budget for every process of a connection
(the SQLite backend keeps it in ``state.db``, so a restart does not refill it). Pipeline and
delivery code only ever see the store interfaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .dead_letters import DeadLetterStore, MemoryDeadLetters
from .identity import IdentityLimits, IdentityStore, MemoryIdentityStore
from .journal import DeliveryJournal, MemoryJournal
from .token_store import MemoryTokenStore, TokenStore


class StateBackend(Protocol):
    def identity(self, preset: str, limits: IdentityLimits) -> IdentityStore: ...
    def journal(self, preset: str, window_seconds: float) -> DeliveryJournal: ...
    def dead_letters(self) -> DeadLetterStore: ...
    def tokens(self, client_id: str) -> TokenStore: ...
    def close(self) -> None: ...


class MemoryState:
    """Stores that live as long as this object; engines sharing one share its stores."""

    def __init__(self) -> None:
        self._identity: dict[str, MemoryIdentityStore] = {}
        self._journals: dict[str, MemoryJournal] = {}
        self._tokens: dict[str, MemoryTokenStore] = {}
        self._dead_letters = MemoryDeadLetters()

    def identity(self, preset: str, limits: IdentityLimits) -> MemoryIdentityStore:
        return self._identity.setdefault(preset, MemoryIdentityStore(limits))

    def journal(self, preset: str, window_seconds: float) -> MemoryJournal:
        return self._journals.setdefault(preset, MemoryJournal(window_seconds))

    def dead_letters(self) -> MemoryDeadLetters:
        return self._dead_letters

    def tokens(self, client_id: str) -> MemoryTokenStore:
        return self._tokens.setdefault(client_id, MemoryTokenStore())

    def close(self) -> None:
        pass


def open_state(directory: str | Path, *, reset: bool = False) -> StateBackend:
    """The embedded backend: one SQLite file, ``<directory>/state.db``.

    A ``state.db`` that is empty, not ours or newer is refused
    (:class:`~engine.state.sqlite.file_marks.StateRefused`); ``reset=True``
    moves such a file aside (``state.db.refused-<UTC time>``) and starts afresh.
    """
    from .sqlite import SqliteState

    return SqliteState(directory, reset=reset)
