"""What the console reads and the few things it may do, over the same stores the engine writes.

The console holds no delivery logic: it reads the record of recent events
(:mod:`engine.state.record`) and the dead letters, explains a recorded event
by re-running the pipeline's ``explain`` on it (reading, never writing, the
identity memory), replays dead letters through
:meth:`engine.runtime.Engine.replay_dead_letters`, the operation behind
``signal-engine dlq replay``, and deletes them through
:func:`engine.state.dead_letters.delete_letters`, the operation behind ``dlq delete``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..compile.compiler import load_preset
from ..compile.stored_integration import Keyring, open_stored
from ..language.model import Preset
from ..language.settings import Settings, resolve
from ..loggers import package_logger
from ..outcome import Outcome
from ..pipeline.explain import explain
from ..pipeline.identity import IdentityMemory
from ..pipeline.prepare import Pipeline
from ..redaction import Redactor
from ..runtime import Engine
from ..state.console_integrations import StoredIntegration
from ..state.dead_letters import delete_letters
from ..state.identity import SHARED_IDENTITY, IdentityLimits, Remembered, Slot
from ..state.record import EventRecord, RecordQuery, integration_name, preset_integration

log = package_logger(__name__)


@dataclass
class Connection:
    """A preset with the settings to deliver it: what replaying an integration's letters needs."""

    preset: Preset
    settings: Settings
    integration: str = ""

    def __post_init__(self) -> None:
        self.integration = self.integration or preset_integration(self.preset.name, self.preset.path)


@dataclass
class Configured:
    """An integration of an integrations file, as the console lists it (read-only here: the file defines it)."""

    name: str
    preset: str
    file: str
    enabled: bool = True
    # Why its letters cannot be replayed from here (a secret setting not set), or None when they can.
    unavailable: str | None = None


@dataclass
class ConsoleSource:
    """The stores of one state directory or Redis, and the connections the console may replay through.

    ``configured`` lists an integrations file's integrations (every one is
    shown, with or without records); ``lags`` reads each integration's lag
    where the store knows it (:mod:`engine.console.lag`).
    """

    backend: Any  # a StateBackend with record() (SqliteState, RedisState)
    connections: Sequence[Connection] = ()
    redactor: Redactor = field(default_factory=Redactor)
    configured: Sequence[Configured] = ()
    lags: Callable[[], dict[str, int]] | None = None
    # Where the key of the integrations set up in the console is read (None: os.environ), and where their
    # presets are looked for beside the built-ins.
    environ: Mapping[str, str] | None = None
    preset_path: Sequence[str] = ()
    # Told when an integration set up here is saved or deleted (``serve --console``: it starts, restarts or
    # stops delivering it at once); answers what it did, in one line. None: a restart picks the change up.
    on_change: Callable[[str], Awaitable[str]] | None = None

    def __post_init__(self) -> None:
        self.record: EventRecord = self.backend.record()
        self.letters = self.backend.dead_letters()
        for connection in self.connections:
            for secret in connection.settings.secrets():
                self.redactor.add(secret)
        self._replaying = asyncio.Lock()

    def connection(self, integration: str) -> Connection | None:
        """The settings to replay an integration's letters with: a file's (or the command line's), else one set up
        in the console, opened now from the state store (so an edit there counts from the next replay)."""
        found = next((c for c in self.connections if c.integration == integration), None)
        if found is not None:
            return found
        opened = self.open_made(integration)
        return None if opened is None or isinstance(opened, str) else opened

    def file_names(self) -> set[str]:
        """The integrations this console was given (a file, a command line): a console-made one never shadows them."""
        return {c.name for c in self.configured} | {c.integration for c in self.connections}

    def made(self) -> list[StoredIntegration]:
        """The integrations set up in the console (in the state store), but for a name the file defines too."""
        opener = getattr(self.backend, "console_integrations", None)
        if opener is None:
            return []
        taken = self.file_names()
        try:
            stored = opener().all()
        except (ValueError, KeyError) as exc:  # a damaged row: the rest of the console still works
            log.warning("console: the integrations set up in the console cannot be read (%s)", type(exc).__name__)
            return []
        return [item for item in stored if item.name not in taken]

    def open_made(self, integration: str) -> Connection | str | None:
        """A console-made integration's connection, why it cannot be opened here, or None when it is not one."""
        if integration in self.file_names():
            return None
        item = next((i for i in self.made() if i.name == integration), None)
        if item is None:
            return None
        opened = open_stored(
            item, Keyring(os.environ if self.environ is None else self.environ), preset_path=self.preset_path
        )
        if isinstance(opened, str):
            return opened
        for secret in opened.settings.secrets():
            self.redactor.add(secret)  # before anything of its replay can be shown
        return Connection(opened.preset, opened.settings, opened.name)

    def replayable(self, integrations: Iterable[str]) -> set[str]:
        """Which of these integrations' letters can be replayed from here (their settings are at hand)."""
        return {name for name in integrations if self.connection(name) is not None}

    def integrations(self) -> list[str]:
        names = set(self.record.integrations()) | {c.integration for c in self.connections}
        names |= {c.name for c in self.configured}
        names |= {item.name for item in self.made()}
        names |= {letter_integration(e) for e in self.letters.entries()}
        return sorted(names)

    # -- events -------------------------------------------------------------
    def events(self, query: RecordQuery) -> list[dict[str, Any]]:
        return self.redactor.redact(self.record.recent(query))

    def event(self, entry_id: str, *, with_explain: bool = True) -> dict[str, Any] | None:
        entry = self.record.get(entry_id)
        if entry is None:
            return None
        if with_explain:
            entry["explain"] = self._explain(entry)
        return self.redactor.redact(entry)

    def _explain(self, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        """The trace of the recorded event, computed now with the identity memory as it is now (read only)."""
        incoming = entry.get("incoming")
        if not isinstance(incoming, dict):
            return None
        connection = self.connection(str(entry.get("integration")))
        try:
            if connection is not None:
                preset, settings = connection.preset, connection.settings
            else:
                preset = load_preset(str(entry.get("preset_path") or entry.get("preset")))
                settings = resolve(preset.settings, {}, require=False)
            limits = IdentityLimits.of(preset.identity)
            # A service's integrations share one identity memory; a one-preset run keeps the preset's own.
            stores = [self.backend.identity(scope, limits) for scope in (SHARED_IDENTITY, preset.name)]
            memory = IdentityMemory.for_preset(preset.identity, _ReadOnly(*stores))
            return explain(Pipeline(preset, settings, memory), incoming)
        except Exception as exc:  # noqa: BLE001 - a preset gone or changed: the page says so, the rest shows
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            return {"error": f"cannot explain this event now: {first}"}

    async def changed(self, integration: str) -> str | None:
        """Tell the service beside this console that a console-made integration was saved or deleted."""
        if self.on_change is None:
            return None
        try:
            return await self.on_change(integration)
        except Exception as exc:  # noqa: BLE001 - the save stands; the next start delivers it
            log.error("console: could not apply the change to %s now (%s)", integration, type(exc).__name__)
            return f"Saved, but this serve could not apply it now ({type(exc).__name__}); it does at its next start."

    def lag(self) -> dict[str, int]:
        """Events each integration has not finished yet, for those the store knows (none without a queue)."""
        return self.lags() if self.lags is not None else {}

    def why_not_replayable(self, integration: str) -> str:
        for item in self.configured:
            if item.name == integration and item.unavailable:
                return f"cannot replay {integration!r}: {item.unavailable}"
        made = self.open_made(integration)
        if isinstance(made, str):
            return f"cannot replay {integration!r} (set up in the console): {made}"
        return (
            f"no settings for {integration!r}: start the console with --config FILE naming it, or with "
            "--preset and --settings for it (replaying needs the credentials)"
        )

    # -- dead letters -------------------------------------------------------
    def dead_letters(self, integration: str | None = None) -> list[dict[str, Any]]:
        out = []
        for entry in self.letters.entries():
            name = letter_integration(entry)
            if integration is None or name == integration:
                out.append({**entry, "integration": name})
        return self.redactor.redact(out)

    async def replay(self, integration: str, ids: Sequence[str] | None = None) -> list[Outcome]:
        """``dlq replay`` for one integration (only ``ids``, when given); the outcomes are recorded as replays."""
        connection = self.connection(integration)
        if connection is None:
            raise ReplayUnavailable(self.why_not_replayable(integration))
        async with self._replaying:  # one replay at a time: two would send the same letter twice
            engine = Engine(
                connection.preset, connection.settings, state=self.backend, integration=connection.integration
            )
            async with engine:
                return await engine.replay_dead_letters(None if ids is None else set(ids))

    def delete(self, integration: str, ids: Sequence[str]) -> list[str]:
        """``dlq delete`` for one integration: the letters with these ids among its own, the ids removed.

        No credentials are needed (nothing is sent), so every integration's
        letters can be deleted, replayable here or not.
        """
        mine = [entry for entry in self.letters.entries() if letter_integration(entry) == integration]
        return delete_letters(self.letters, [mine], ids)

    def letter(self, letter_id: str) -> dict[str, Any] | None:
        return next((letter for letter in self.dead_letters() if str(letter.get("id")) == letter_id), None)


class ReplayUnavailable(Exception):
    """The console was not given the credentials of this integration."""


def letter_integration(entry: Mapping[str, Any]) -> str:
    return str(entry.get("integration") or integration_name(str(entry.get("preset") or "")))


class _ReadOnly:
    """The identity memory as an explanation sees it: recalled (from the first store that knows), never changed."""

    def __init__(self, *inner: Any) -> None:
        self.inner = inner

    def merge(self, slots: Sequence[Slot], traits: Mapping[str, Any], owner: str | None) -> None:
        return None

    def forget(self, slots: Sequence[Slot]) -> None:
        return None

    def recall(self, kind: str, ident: str) -> Remembered | None:
        for store in self.inner:
            found = store.recall(kind, ident)
            if found is not None:
                return found
        return None


__all__ = ["Configured", "Connection", "ConsoleSource", "RecordQuery", "ReplayUnavailable", "letter_integration"]
