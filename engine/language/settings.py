"""User-supplied setting values, checked against the preset's declarations.

Settings carry the credentials, so this module is also where the engine
learns which strings are secret; :class:`Settings` hands them to the
redactor and keeps them out of every view a person sees.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .yaml_source import YamlSourceError, load_yaml

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SettingsError(Exception):
    """Settings are unusable; the message is one line naming the file or setting."""


@dataclass(frozen=True)
class SettingSpec:
    name: str
    type: str
    required: bool = False
    secret: bool = False
    default: Any = None
    description: str = ""


@dataclass(frozen=True)
class Settings:
    """Resolved values: defaults applied, types checked, secrets known."""

    values: Mapping[str, Any]
    secret_names: frozenset[str]

    def __getitem__(self, name: str) -> Any:
        return self.values.get(name)

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def public(self) -> dict[str, Any]:
        """The values a mapping may see: secrets are never exposed to expressions."""
        return {k: v for k, v in self.values.items() if k not in self.secret_names}

    def secrets(self) -> list[str]:
        return [v for k, v in self.values.items() if k in self.secret_names and isinstance(v, str) and v]


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    import ipaddress  # only for a plain-http URL: most runs never get here

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(value: str) -> str | None:
    """Why ``value`` is not an acceptable API origin, or None.

    Plain http would send bearer tokens in the clear, so it is accepted only
    for loopback hosts (local sandboxes).
    """
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # e.g. an unclosed "[" around an IPv6 address
        reason = (str(exc).splitlines() or ["unreadable"])[0][:200]
        return f"is not a valid URL ({reason}); expected an http(s) URL such as https://api.example.com"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an http(s) URL such as https://api.example.com"
    try:
        port = parts.port
    except ValueError:  # out of range or not a number
        port = 0
    if port == 0:
        return "has an invalid port (it must be a number from 1 to 65535)"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return "plain http is accepted only for loopback hosts (127.0.0.1, ::1, localhost); use https"
    if parts.username or parts.password:
        return "must not contain credentials (they would show in every request URL)"
    if parts.query or parts.fragment:
        return "must not contain a query or fragment"
    return None


def resolve(specs: Mapping[str, SettingSpec], supplied: Mapping[str, Any], *, require: bool,
            where: Mapping[str, str] | None = None) -> Settings:
    """Apply defaults and check types.

    ``require`` is False for dry runs: they build the exact document without
    credentials, so a missing secret is not an error there.
    ``where`` maps a setting name to "file:line" for messages.
    """
    where = where or {}
    values: dict[str, Any] = {}
    for name in supplied:
        if name not in specs:
            known = ", ".join(sorted(specs))
            raise SettingsError(f"{where.get(name, 'settings')}: unknown setting {name!r} (this preset takes: {known})")
    for name, spec in specs.items():
        place = where.get(name, "settings")
        if name in supplied and supplied[name] is not None:
            values[name] = _coerce(spec, supplied[name], place)
        elif spec.default is not None:
            values[name] = spec.default
        elif spec.required and require:
            raise SettingsError(f"{place}: required setting {name!r} is missing ({spec.description or spec.type})")
    return Settings(values, frozenset(n for n, s in specs.items() if s.secret))


def _coerce(spec: SettingSpec, value: Any, place: str) -> Any:
    label = f"{place}: setting {spec.name!r}"
    if spec.type in ("string", "url"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise SettingsError(f"{label} must be a non-empty string")
        if spec.type == "url":
            value = value.rstrip("/")
            problem = check_url(value)
            if problem:
                raise SettingsError(f"{label} {problem}")
        return value
    if spec.type == "string_list":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SettingsError(f"{label} must be a list of strings")
        if not value:
            # An empty list is almost always an unset ${VAR}; for consent it would open the gate.
            raise SettingsError(f"{label} must list at least one value")
        return value
    if spec.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{label} must be an integer")
        return value
    if spec.type == "boolean":
        if not isinstance(value, bool):
            raise SettingsError(f"{label} must be true or false")
        return value
    raise SettingsError(f"{label} has unknown type {spec.type!r}")


def load_settings_file(path: str | Path, environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a YAML mapping of setting values, expanding ``${ENV_VAR}`` references.

    Returns the values and, for messages, where each was written. Secrets are
    best kept in the environment and referenced, so the file can be committed.
    """
    environ = os.environ if environ is None else environ
    try:
        doc = load_yaml(path)
    except YamlSourceError as exc:
        raise SettingsError(str(exc)) from None
    data = doc.data()
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise SettingsError(f"{doc.path}:1:1: settings must be a YAML mapping of name: value")
    where: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, value in data.items():
        loc = doc.locate([name], key=True)
        where[name] = f"{doc.path}:{loc.line}"
        values[name] = _expand(value, environ, f"{doc.path}:{loc.line}: setting {name!r}")
    return values, where


def _expand(value: Any, environ: Mapping[str, str], label: str) -> Any:
    if isinstance(value, list):
        return [_expand(v, environ, label) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise SettingsError(f"{label}: environment variable {name} is not set")
        return environ[name]

    return _ENV_REF.sub(substitute, value)
