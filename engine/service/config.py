"""Who may post to the intake: write keys and the signing secret, from the environment or a file.

* ``SIGNAL_WRITE_KEYS``: comma-separated write keys (the HTTP Basic username
  of the Segment-compatible routes);
* ``SIGNAL_SIGNING_SECRET``: the HMAC secret of ``POST /v1/events``;
* ``--intake FILE``: YAML with ``write_keys`` (a list, or one comma-separated
  string) and ``signing_secret``; ``${ENV_VAR}`` is expanded, as in settings
  files. What the file names wins over the environment.

Errors name the file and the field, never a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..language.settings import SettingsError, UnsetVariable, load_settings_file
from .intake import IntakeConfig

WRITE_KEYS_ENV = "SIGNAL_WRITE_KEYS"
SIGNING_SECRET_ENV = "SIGNAL_SIGNING_SECRET"
KNOWN = ("write_keys", "signing_secret")


class IntakeConfigError(ValueError):
    pass


def load_intake_config(environ: Mapping[str, str], path: str | None = None, **limits: Any) -> IntakeConfig:
    keys = _split(environ.get(WRITE_KEYS_ENV, ""))
    secret = environ.get(SIGNING_SECRET_ENV) or None
    if path is not None:
        try:
            values, where = load_settings_file(path, environ)
        except SettingsError as exc:
            raise IntakeConfigError(str(exc)) from None
        for name in values:
            if name not in KNOWN:
                raise IntakeConfigError(f"{where[name]}: unknown key {name!r} (known: {', '.join(KNOWN)})")
        if "write_keys" in values:
            keys = _keys_from(values["write_keys"], where["write_keys"])
        if "signing_secret" in values:
            value = values["signing_secret"]
            if isinstance(value, UnsetVariable) or not isinstance(value, str) or not value:
                raise IntakeConfigError(
                    f"{where['signing_secret']}: signing_secret must be a non-empty string "
                    "(or ${VAR} naming a set environment variable)"
                )
            secret = value
    if not keys and not secret:
        raise IntakeConfigError(
            f"no write keys and no signing secret: set {WRITE_KEYS_ENV} and/or "
            f"{SIGNING_SECRET_ENV}, or pass --intake FILE"
        )
    return IntakeConfig(write_keys=frozenset(keys), signing_secret=secret, **limits)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _keys_from(value: Any, where: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    keys: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, UnsetVariable) or not isinstance(item, str):
            raise IntakeConfigError(
                f"{where}: write_keys[{i}] must be a string (or ${{VAR}} naming a set environment variable)"
            )
        keys += _split(item)
    return keys
