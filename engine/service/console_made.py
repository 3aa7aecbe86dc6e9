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

from ..compile.compiler import PresetError, load_preset
from ..language.settings import SettingsError, resolve
from ..redaction import Redactor
from ..state.console_integrations import KEY_ENV, SecretBox, SecretsUnavailable, StoredIntegration
from .integrations import Integration


@dataclass
class ConsoleMade:
    """What a service took from the store: the usable integrations, and one line per one it skipped."""

    integrations: list[Integration] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

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
    box: SecretBox | None = None
    no_box: str | None = None
    for item in stored:
        label = f"integration {item.name!r} (set up in the console)"
        if item.name in taken:
            out.skipped.append(
                f"{label} is skipped: the integrations file defines {item.name!r} too, and the file's is "
                "delivered; rename or delete the console's"
            )
            continue
        try:
            preset = load_preset(item.preset, preset_path)
        except PresetError as exc:
            first = (exc.problems or ["cannot be loaded"])[0]
            out.skipped.append(f"{label} is skipped: its preset {item.preset} cannot be loaded: {first}")
            continue
        values: dict[str, Any] = dict(item.values)
        opened: list[str] = []
        if secrets and item.sealed:
            if box is None and no_box is None:
                key = environ.get(KEY_ENV, "").strip()
                try:
                    box = SecretBox(key) if key else None
                    no_box = None if key else f"{KEY_ENV} is not set here; set it to the key the console used"
                except SecretsUnavailable as exc:
                    no_box = str(exc)
            try:
                if box is None:
                    raise SecretsUnavailable(str(no_box))
                for name, token in item.sealed.items():
                    opened.append(box.open(token))
                    values[name] = opened[-1]
            except SecretsUnavailable as exc:
                out.skipped.append(f"{label} is skipped: its secrets cannot be opened: {exc}")
                continue
        try:
            settings = resolve(preset.settings, values, require=secrets, where={n: n for n in preset.settings})
        except SettingsError as exc:
            why = Redactor(opened).redact("; ".join(exc.problems))
            out.skipped.append(f"{label} is skipped: {why}")
            continue
        out.integrations.append(Integration(item.name, preset, settings, True, item.preset))
    return out


__all__ = ["ConsoleMade", "load_console_made", "stored_in"]
