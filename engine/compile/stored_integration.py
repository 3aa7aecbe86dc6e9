"""An integration set up in the console, opened: its preset loaded, its secrets unsealed, its settings resolved.

Two places need this and must agree: the service delivers such an
integration (:mod:`engine.service.console_made`), and the console replays its
dead letters (:mod:`engine.console.source`). Both sit above this layer and
neither may import the other, so opening lives here, beside the preset
loader it uses.

Why a reason rather than an exception per integration: each caller goes on
with the others and says, in one line, why this one cannot be used (no key,
a wrong key, a preset gone, a setting missing). No reason ever holds a
secret: a settings problem is passed through a redactor of the opened ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..language.model import Preset
from ..language.settings import Settings, SettingsError, resolve
from ..redaction import Redactor
from ..state.console_integrations import KEY_ENV, SecretBox, SecretsUnavailable, StoredIntegration
from .compiler import PresetError, load_preset


@dataclass
class OpenedIntegration:
    """A stored integration ready to deliver: its preset, its settings (secrets in the clear), as saved."""

    name: str
    preset: Preset
    settings: Settings
    preset_ref: str

    def __repr__(self) -> str:  # settings hold secrets: never shown
        return f"OpenedIntegration({self.name!r}, preset={self.preset_ref!r})"


class Keyring:
    """The console's key as read from one environment, opened once for every integration that needs it."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        key = environ.get(KEY_ENV, "").strip()
        self.box: SecretBox | None = None
        self.missing: str | None = None
        if not key:
            self.missing = f"{KEY_ENV} is not set here; set it to the key the console used"
            return
        try:
            self.box = SecretBox(key)
        except SecretsUnavailable as exc:
            self.missing = str(exc)

    def open(self, token: str) -> str:
        if self.box is None:
            raise SecretsUnavailable(str(self.missing))
        return self.box.open(token)


def open_stored(
    item: StoredIntegration,
    keyring: Keyring | None,
    *,
    preset_path: Sequence[str | Path] = (),
) -> OpenedIntegration | str:
    """The integration, or why it cannot be used (one line, no secret).

    ``keyring=None`` opens no secret (the Redis intake only names the
    integration and learns identity): its settings are then resolved with no
    secret required.
    """
    try:
        preset = load_preset(item.preset, preset_path)
    except PresetError as exc:
        first = (exc.problems or ["cannot be loaded"])[0]
        return f"its preset {item.preset} cannot be loaded: {first}"
    values: dict[str, Any] = dict(item.values)
    opened: list[str] = []
    if keyring is not None:
        try:
            for name, token in item.sealed.items():
                opened.append(keyring.open(token))
                values[name] = opened[-1]
        except SecretsUnavailable as exc:
            return f"its secrets cannot be opened: {exc}"
    try:
        settings = resolve(preset.settings, values, require=keyring is not None, where={n: n for n in preset.settings})
    except SettingsError as exc:
        return Redactor(opened).redact("; ".join(exc.problems))
    return OpenedIntegration(item.name, preset, settings, item.preset)


__all__ = ["Keyring", "OpenedIntegration", "open_stored"]
