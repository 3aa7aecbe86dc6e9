"""The embedded state backend: every store of a state directory in one SQLite file."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from ...loggers import package_logger
from ..errors import StateError
from ..identity import IdentityLimits
from ..record import RecordLimits
from .console_integrations import SqliteIntegrationStore
from .database import DB_NAME, Database
from .dead_letters import SqliteDeadLetters
from .identity import SqliteIdentityStore
from .journal import SqliteJournal
from .legacy import import_legacy
from .rate_budget import SqliteRateBudget
from .record import SqliteRecord
from .tokens import LOCK_NAME, SqliteTokenStore

log = package_logger(__name__)

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "Database",
    "SqliteDeadLetters",
    "SqliteIdentityStore",
    "SqliteJournal",
    "SqliteRateBudget",
    "SqliteRecord",
    "SqliteState",
    "SqliteTokenStore",
]


class SqliteState:
    """``<directory>/state.db``, shared by every preset (rows are keyed by preset name)."""

    def __init__(self, directory: str | Path, *, clock: Callable[[], float] = time.time, reset: bool = False) -> None:
        self.db = Database(directory, reset=reset)
        self._clock = clock
        self._imported: set[str] = set()
        self._import_lock = threading.Lock()
        self._budgets: weakref.WeakSet[SqliteRateBudget] = weakref.WeakSet()  # given back their blocks at close
        try:
            os.close(os.open(self.db.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            self.db.close()
            raise StateError(
                f"{self.db.directory / LOCK_NAME}: cannot create the refresh lock ({exc.strerror})"
            ) from None

    @property
    def directory(self) -> Path:
        return self.db.directory

    @property
    def moved_aside(self) -> Path | None:
        """Where ``reset`` moved a refused ``state.db`` (None when the file was usable or missing)."""
        return self.db.moved_aside

    def identity(self, preset: str, limits: IdentityLimits) -> SqliteIdentityStore:
        store = SqliteIdentityStore(self.db, preset, limits, clock=self._clock)
        self._import_once(preset, store)
        return store

    def journal(self, preset: str, window_seconds: float) -> SqliteJournal:
        return SqliteJournal(self.db, preset, window_seconds, clock=self._clock)

    def dead_letters(self) -> SqliteDeadLetters:
        return SqliteDeadLetters(self.db)

    def tokens(self, client_id: str) -> SqliteTokenStore:
        return SqliteTokenStore(self.db, client_id)

    def rate_budget(
        self, name: str, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> SqliteRateBudget:
        """One rate window's budget, kept in ``state.db``: a restart does not refill it, and every
        process on this state directory (a ``run`` and a ``dlq replay``) spends it once. ``clock``
        is the engine's; the row's times are this state's wall clock."""
        budget = SqliteRateBudget(self.db, name, rate, capacity, clock=clock, wall=self._clock)
        self._budgets.add(budget)
        return budget

    def record(self, limits: RecordLimits = RecordLimits()) -> SqliteRecord:  # noqa: B008 - frozen
        """The record of recent events the console reads (see :mod:`engine.state.record`)."""
        return SqliteRecord(self.db, limits, clock=self._clock)

    def console_integrations(self) -> SqliteIntegrationStore:
        """Integrations created in the console (a table of ``state.db``; secrets sealed)."""
        return SqliteIntegrationStore(self.db)

    def close(self) -> None:
        for budget in list(self._budgets):
            budget.close()  # what was reserved and not sent goes back for the next process
        self.db.close()

    def _import_once(self, preset: str, identity: SqliteIdentityStore) -> None:
        with self._import_lock:
            if preset in self._imported:
                return
            try:
                import_legacy(self.db, preset, identity)
            except StateError as exc:
                # The old files stay where they are and are imported by the next engine that can.
                log.error(
                    "state: could not import the files of an earlier version (%s); they are left in place", exc.strerror
                )
                return
            self._imported.add(preset)
