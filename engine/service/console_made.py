"""Integrations set up in the console, as ``serve`` and ``worker`` deliver them.

The console keeps them in the state store (:mod:`engine.state.console_integrations`):
a preset, its plain settings and its secret settings sealed with the key in
``SIGNAL_CONSOLE_SECRET_KEY``. A service reads them at start, beside the
integrations file's, and each becomes an :class:`~.integrations.Integration`
like a file's: its own engine, position, journal, dead letters, token and
rate budget.

Why one that cannot be used is skipped rather than stopping the service: it
was made in a browser, perhaps by someone else, and the file's integrations
must not stop being delivered because of it. Each skipped one gets one line
naming it and saying why (no key, a wrong key, a preset gone, a setting
missing); no line ever holds a secret. A name the integrations file also
defines is the file's (the console refuses to save one, but the file may
gain it later).

When is a change seen: at the next start of the process (``serve`` or
``worker``); docs/guides/integrations.md says so, and the console's page too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compile.stored_integration import Keyring, open_stored
from ..state.console_integrations import StoredIntegration
from .integrations import Integration


@dataclass
class ConsoleMade:
    """What a service took from the store: the usable integrations, and one line per one it skipped."""

    integrations: list[Integration] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    # The skipped ones' names (but a name the file defines): their place in the queue is kept, as a disabled
    # integration's is, so what waits for them is still there once they can be opened again.
    resting: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [i.name for i in self.integrations]


def stored_in(backend: Any) -> list[StoredIntegration]:
    """The console-made integrations of a state backend (none for one that keeps none, such as memory)."""
    opener = getattr(backend, "console_integrations", None)
    return opener().all() if opener is not None else []


def load_console_made(
    stored: Sequence[StoredIntegration],
    environ: Mapping[str, str],
    *,
    taken: Collection[str] = (),
    preset_path: Sequence[str | Path] = (),
    secrets: bool = True,
) -> ConsoleMade:
    """Each stored integration as the service delivers it, or one line saying why it is skipped.

    ``secrets=False`` (the Redis intake, which only names integrations and
    learns identity) opens no secret: it needs neither credentials nor the key.
    """
    out = ConsoleMade()
    keyring = Keyring(environ) if secrets else None
    for item in stored:
        label = f"integration {item.name!r} (set up in the console)"
        if item.name in taken:
            out.skipped.append(
                f"{label} is skipped: the integrations file defines {item.name!r} too, and the file's is "
                "delivered; rename or delete the console's"
            )
            continue
        opened = open_stored(item, keyring, preset_path=preset_path)
        if isinstance(opened, str):
            out.skipped.append(f"{label} is skipped: {opened}")
            out.resting.append(item.name)
            continue
        out.integrations.append(Integration(item.name, opened.preset, opened.settings, True, item.preset))
    return out


__all__ = ["ConsoleMade", "load_console_made", "stored_in"]
