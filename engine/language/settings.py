"""User-supplied setting values, checked against the preset's declarations.

Settings carry the credentials, so this module is also where the engine
learns which strings are secret; :class:`Settings` hands them to the
redactor and keeps them out of every view a person sees.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .records import record

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SettingsError(Exception):
    """Settings are unusable. ``problems`` holds one line per problem, each naming the file:line or setting.

    Every problem found is reported at once, so a settings file is fixed in
    one pass rather than one error per run.
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@record
class UnsetVariable:
    """A value that references ``${VAR}`` names missing from the environment.

    Kept rather than refused when the file is read: a dry run needs no
    secrets, so an unset secret is only an error where it is needed.
    """

    names: tuple[str, ...]


@record
class SettingSpec:
    name: str
    type: str
    required: bool = False
    secret: bool = False
    default: Any = None
    description: str = ""
    # The value may come from the state directory instead: the refresh token a
    # person stored with ``signal-engine auth``. Missing from the settings, it
    # is not an error here; the engine checks the state when delivery starts.
    stored: bool = False


@record
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


def resolve(
    specs: Mapping[str, SettingSpec],
    supplied: Mapping[str, Any],
    *,
    require: bool,
    where: Mapping[str, str] | None = None,
) -> Settings:
    """Apply defaults and check types; raise :class:`SettingsError` listing every problem.

    ``require`` is False for dry runs: they build the exact document without
    credentials, so a missing secret (or a secret whose ``${VAR}`` is unset)
    is not an error there. ``where`` maps a setting name to "file:line".
    Values are never converted: ``12345`` for a string setting, or a bare
    string for a list, is an error, because YAML's guess is rarely what was meant.
    """
    where = where or {}
    values: dict[str, Any] = {}
    problems: list[tuple[int, str]] = []  # (line, message): reported in file order
    for name in supplied:
        if name not in specs:
            known = ", ".join(sorted(specs))
            problems.append(
                (
                    _line_of(where.get(name)),
                    f"{where.get(name, 'settings')}: unknown setting {name!r} (this preset takes: {known})",
                )
            )
    for name, spec in specs.items():
        place = where.get(name, "settings")
        value = supplied.get(name)
        unset = _unset_names(value)
        if unset:
            if spec.secret and not require:
                value = None  # a dry run needs no secret: treat it as not given
            else:
                problems.append(
                    (
                        _line_of(place),
                        f"{place}: setting {name!r}: environment variable "
                        f"{', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set",
                    )
                )
                continue
        if value is not None:
            problem = _check(spec, value)
            if problem:
                problems.append((_line_of(place), f"{place}: setting {name!r} {problem}"))
            else:
                values[name] = value.rstrip("/") if spec.type == "url" else value
        elif spec.default is not None:
            values[name] = spec.default
        elif spec.required and require and not spec.stored:
            problems.append(
                (_line_of(place), f"{place}: required setting {name!r} is missing ({spec.description or spec.type})")
            )
    if problems:
        raise SettingsError([text for _, text in sorted(problems, key=lambda p: p[0])])
    return Settings(values, frozenset(n for n, s in specs.items() if s.secret))


def resolve_settings(preset: Any, values: Mapping[str, Any] | None = None, *, dry_run: bool = False) -> Settings:
    """Settings for ``preset`` (a :class:`~engine.language.model.Preset`) from a plain mapping.

    With ``dry_run=True`` required credentials may be left out, as for
    ``signal-engine run --dry-run``. Raises :class:`SettingsError`.
    """
    specs = getattr(preset, "settings", preset)
    return resolve(specs, values or {}, require=not dry_run)


def _line_of(place: str | None) -> int:
    """The line number in "file:line", for ordering; problems without one come last."""
    if place:
        tail = place.rsplit(":", 1)[-1]
        if tail.isdigit():
            return int(tail)
    return 1 << 30


def _unset_names(value: Any) -> list[str]:
    if isinstance(value, UnsetVariable):
        return list(value.names)
    if isinstance(value, list):
        return [name for item in value for name in _unset_names(item)]
    return []


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"got {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"got the number {value!r}"
    if isinstance(value, str):
        return f"got the text {value[:60]!r}"
    if isinstance(value, list):
        return "got a list"
    if isinstance(value, dict):
        return "got a mapping"
    return f"got {type(value).__name__}"


def _check(spec: SettingSpec, value: Any) -> str | None:
    """Why ``value`` does not fit ``spec``, or None. Nothing is converted."""
    if spec.type in ("string", "url"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f'must be a string, {_describe(value)}; quote it to keep it as text: "{value}"'
        if not isinstance(value, str):
            return f"must be a string, {_describe(value)}"
        if not value:
            return "must be a non-empty string"
        if spec.type == "url":
            return check_url(value.rstrip("/"))
        return None
    if spec.type == "string_list":
        if isinstance(value, str):
            return f"must be a list of strings, {_describe(value)}; write it as a YAML list: [{value}]"
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            return f"must be a list of strings, {_describe(value) if not isinstance(value, list) else 'got a list with a non-text or empty item'}"
        if not value:
            # An empty list would open the consent gate (or is an unset variable).
            return "must list at least one value"
        return None
    if spec.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, {_describe(value)}"
        return None
    if spec.type == "boolean":
        if not isinstance(value, bool):
            return f"must be true or false, {_describe(value)}"
        return None
    return f"has unknown type {spec.type!r}"


def load_settings_file(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a YAML mapping of setting values, expanding ``${ENV_VAR}`` references.

    Returns the values and, for messages, where each was written. Secrets are
    best kept in the environment and referenced, so the file can be committed.
    A reference to an unset variable is kept as :class:`UnsetVariable`; :func:`resolve`
    decides whether that matters (it does not for a secret in a dry run).
    """
    from .yaml_source import YamlSourceError, load_yaml  # a run without --settings parses no YAML

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
        values[name] = _expand(value, environ)
    return values, where


def expand_references(value: Any, environ: Mapping[str, str]) -> Any:
    """``${VAR}`` in ``value`` (a string, or a list of them) expanded as in a settings file."""
    return _expand(value, environ)


def _expand(value: Any, environ: Mapping[str, str]) -> Any:
    """``${VAR}`` replaced from the environment; a string naming an unset variable becomes :class:`UnsetVariable`."""
    if isinstance(value, list):
        return [_expand(v, environ) for v in value]
    if not isinstance(value, str):
        return value
    missing = [name for name in _ENV_REF.findall(value) if name not in environ]
    if missing:
        return UnsetVariable(tuple(dict.fromkeys(missing)))
    return _ENV_REF.sub(lambda match: environ[match.group(1)], value)
