"""The integrations file: which integrations one intake feeds, each a preset with its settings.

```yaml
# yaml-language-server: $schema=https://signal-engine.dev/schemas/integrations.schema.json
intake:                        # optional; else SIGNAL_WRITE_KEYS / SIGNAL_SIGNING_SECRET
  write_keys: ["${SIGNAL_WRITE_KEY}"]
integrations:
  outreach:                    # lower-case letters, digits and '-'
    preset: outreach/lead-capture
    settings_file: outreach-settings.yaml
  hubspot:
    preset: hubspot/contacts
    settings:
      access_token: "${HUBSPOT_TOKEN}"
    enabled: true
```

Why the file is read here, with every problem collected, rather than
failing on the first: ``check --config`` and ``serve --config`` both print
one located line per problem, so a file is fixed in one pass, and nothing is
half-started. The file is meant to be committed: ``${NAME}`` is read from the
environment, and a secret written as a literal works but is warned about.

The old form, ``serve PRESET --settings FILE``, is one integration named
after the preset (:func:`single`, :func:`name_for_preset`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compile.compiler import PresetError, load_preset
from ..language.model import Preset
from ..language.settings import (
    Settings,
    SettingsError,
    UnsetVariable,
    expand_references,
    load_settings_file,
    resolve,
)
from ..language.yaml_source import YamlSourceError, load_yaml, read_source
from ..state.record import INTEGRATION_NAME, preset_integration

NAME = INTEGRATION_NAME
TOP_KEYS = ("intake", "integrations")
INTAKE_KEYS = ("write_keys", "signing_secret")
INTEGRATION_KEYS = ("preset", "settings_file", "settings", "enabled")
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


@dataclass
class Integration:
    """One destination fed by the intake: its name keys its position, journal, dead letters and rate budget."""

    name: str
    preset: Preset
    settings: Settings
    enabled: bool = True
    preset_ref: str = ""  # as written in the file (or on the command line)
    line: int | None = None  # where the file declares it

    def __repr__(self) -> str:  # settings hold secrets: never shown
        return f"Integration({self.name!r}, preset={self.preset.name!r}, enabled={self.enabled})"


@dataclass
class IntegrationsConfig:
    """A read integrations file: the integrations in file order and the intake's keys, if it names them."""

    integrations: list[Integration]
    path: str | None = None
    write_keys: list[str] | None = None
    signing_secret: str | None = None
    warnings: list[str] = field(default_factory=list)
    # The Redis stream's name: None, the intake's one stream; the old one-preset form keeps the preset's own.
    stream: str | None = None

    def enabled(self) -> list[Integration]:
        return [i for i in self.integrations if i.enabled]

    def names(self) -> list[str]:
        return [i.name for i in self.integrations]

    def get(self, name: str) -> Integration:
        for integration in self.integrations:
            if integration.name == name:
                return integration
        raise KeyError(name)

    def secrets(self) -> list[str]:
        """Every secret the file names (the intake's and each integration's), for the redactor."""
        found = [s for i in self.integrations for s in i.settings.secrets()]
        found += list(self.write_keys or [])
        if self.signing_secret:
            found.append(self.signing_secret)
        return found


class IntegrationsError(Exception):
    """The file cannot be used: one located line per problem."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = warnings or []


def name_for_preset(preset: Preset) -> str:
    """The integration name of the old ``serve PRESET`` form: the engine's one rule
    (:func:`engine.state.record.preset_integration`), so ``serve PRESET``, ``run``, ``dlq replay PRESET``
    and the console name a one-preset integration alike."""
    return preset_integration(preset.name, preset.path)


def single(preset: Preset, settings: Settings, preset_ref: str) -> IntegrationsConfig:
    """``serve PRESET --settings FILE``: one integration named after the preset."""
    return IntegrationsConfig(
        [Integration(name_for_preset(preset), preset, settings, True, preset_ref)], stream=preset.name
    )


def load_integrations(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    preset_path: Sequence[str | Path] = (),
    require: bool | Collection[str] = True,
    intake: bool = True,
) -> IntegrationsConfig:
    """Read and check an integrations file; raise :class:`IntegrationsError` listing every problem.

    ``require`` is False where credentials are not needed (the Redis intake,
    ``dlq list``): a missing secret is then not an error; a collection of
    names requires only those integrations' (``worker --integration``). A disabled
    integration's credentials are never required. ``intake=False`` (the
    console) skips the ``intake:`` section: reading letters and records needs
    no write key, so an unset ``${SIGNAL_WRITE_KEY}`` is no problem there.
    """
    config, problems, warnings = _read(
        Path(path), os.environ if environ is None else environ, preset_path, require, strict=False, intake=intake
    )
    if problems or config is None:
        raise IntegrationsError(problems, warnings)
    config.warnings = warnings
    return config


def read_integrations(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    preset_path: Sequence[str | Path] = (),
    require: bool = False,
) -> list[Integration]:
    """The integrations of a file, in file order (what a console lists); :class:`IntegrationsError` if unusable.

    ``require`` is False by default: listing needs no credential, so an unset
    secret is not an error here (it is for ``serve``).
    """
    return load_integrations(path, environ, preset_path=preset_path, require=require, intake=False).integrations


def check_integrations(
    path: str | Path, environ: Mapping[str, str] | None = None, *, preset_path: Sequence[str | Path] = ()
) -> tuple[list[str], list[str]]:
    """Every problem and every warning of the file (``check --config``), each located."""
    _, problems, warnings = _read(
        Path(path), os.environ if environ is None else environ, preset_path, True, strict=True
    )
    return problems, warnings


# -- reading ---------------------------------------------------------------------
def _read(
    path: Path,
    environ: Mapping[str, str],
    preset_path: Sequence[str | Path],
    require: bool | Collection[str],
    *,
    strict: bool,
    intake: bool = True,
) -> tuple[IntegrationsConfig | None, list[str], list[str]]:
    """``strict`` (``check``): each preset is checked as ``check PRESET`` does, bypassing the preset cache."""
    shown = str(path)
    problems: list[tuple[int, str]] = []
    warnings: list[tuple[int, str]] = []
    try:
        text = read_source(path).decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except (OSError, YamlSourceError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return None, [reason if reason.startswith(shown) else f"{shown}: cannot read: {reason}"], []
    root, duplicates = _parse(shown, text)
    if isinstance(root, str):
        return None, [root], []
    for line, message in duplicates:
        problems.append((line, message))
    data = root
    if data is None or not isinstance(data, dict):
        return None, [f"{shown}:1: an integrations file is a YAML mapping with an 'integrations:' key"], []

    def at(keys: list[Any], key: bool = False) -> int:
        node: Any = data
        line = 1
        for i, part in enumerate(keys):
            lc = getattr(node, "lc", None)
            if lc is None or not isinstance(node, dict) or part not in node:
                break
            line = (lc.key(part) if key and i == len(keys) - 1 else lc.value(part))[0] + 1
            node = node[part]
        return line

    known = ", ".join(TOP_KEYS)
    problems.extend(
        (at([name], True), f"{shown}:{at([name], True)}: unknown key {name!r} (known: {known})")
        for name in data
        if name not in TOP_KEYS
    )
    config = IntegrationsConfig([], path=shown)
    if intake:
        _intake(data.get("intake"), shown, environ, at, config, problems, warnings)
    declared = data.get("integrations")
    if not isinstance(declared, dict) or not declared:
        line = at(["integrations"]) if "integrations" in data else 1
        problems.append((line, f"{shown}:{line}: 'integrations:' must map at least one name to its preset"))
        declared = {}
    for name, body in declared.items():
        line = at(["integrations", name], True)
        where = f"{shown}:{line}"
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(
                (
                    line,
                    (
                        f"{where}: integration name {str(name)!r} is invalid: lower-case letters, "
                        "digits and '-', starting and ending with a letter or digit, at most 63"
                    ),
                )
            )
            continue
        needed = require if isinstance(require, bool) else name in require
        integration = _integration(
            name,
            body,
            path,
            where,
            line,
            environ,
            preset_path,
            needed,
            strict,
            lambda keys, key=False, n=name: at(["integrations", n, *keys], key),
            problems,
            warnings,
        )
        if integration is not None:
            config.integrations.append(integration)

    def ordered(items: list[tuple[int, str]]) -> list[str]:
        return [text for _, text in sorted(items, key=lambda item: item[0])]

    return config, ordered(problems), ordered(warnings)


def _parse(shown: str, text: str) -> tuple[Any, list[tuple[int, str]]]:
    """The document (or a one-line error), and every duplicate integration name with its line.

    A duplicate key is not fatal here, unlike in a preset: the other
    problems of the file are still reported in the same pass.
    """
    try:
        return load_yaml(shown, text).root, []
    except YamlSourceError as exc:
        if "duplicate key" not in str(exc):
            return str(exc), []
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = True
    try:
        root = yaml.load(text)
        tree = YAML(typ="rt").compose(text)
    except (YAMLError, RecursionError) as exc:
        return f"{shown}:1: {type(exc).__name__}", []
    return root, _duplicates(shown, tree)


def _duplicates(shown: str, node: Any, path: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    from ruamel.yaml.nodes import MappingNode, SequenceNode

    found: list[tuple[int, str]] = []
    if isinstance(node, MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            line = key.start_mark.line + 1
            if name in first:
                what = "integration" if path == ("integrations",) else "key"
                found.append(
                    (
                        line,
                        (
                            f"{shown}:{line}: {what} {name!r} is declared twice (first at line "
                            f"{first[name]}); names must be unique"
                        ),
                    )
                )
            else:
                first[name] = line
            found += _duplicates(shown, value, (*path, name))
    elif isinstance(node, SequenceNode):
        for item in node.value:
            found += _duplicates(shown, item, path)
    return found


def _intake(
    section: Any,
    shown: str,
    environ: Mapping[str, str],
    at: Any,
    config: IntegrationsConfig,
    problems: list[tuple[int, str]],
    warnings: list[tuple[int, str]],
) -> None:
    if section is None:
        return
    if not isinstance(section, dict):
        line = at(["intake"])
        problems.append((line, f"{shown}:{line}: 'intake:' must be a mapping with write_keys and/or signing_secret"))
        return
    for key, raw in section.items():
        line = at(["intake", key], True)
        where = f"{shown}:{line}"
        if key not in INTAKE_KEYS:
            problems.append((line, f"{where}: intake: unknown key {key!r} (known: {', '.join(INTAKE_KEYS)})"))
            continue
        items = raw if key == "write_keys" and isinstance(raw, list) else [raw]
        values: list[str] = []
        for item in items:
            if not isinstance(item, str) or not item:
                problems.append(
                    (
                        line,
                        (
                            f"{where}: intake.{key} must be a non-empty string"
                            f"{' or a list of them' if key == 'write_keys' else ''}"
                        ),
                    )
                )
                continue
            if not _REFERENCE.search(item):
                warnings.append(
                    (
                        line,
                        (
                            f"{where}: intake.{key} is written as a literal secret; this file is meant "
                            'to be committed: write "${NAME}" and set NAME in the environment'
                        ),
                    )
                )
            value = expand_references(item, environ)
            if isinstance(value, UnsetVariable):
                problems.append(
                    (line, (f"{where}: intake.{key}: environment variable {', '.join(value.names)} is not set"))
                )
                continue
            values.append(value)
        if key == "write_keys":
            config.write_keys = [part.strip() for v in values for part in v.split(",") if part.strip()]
        elif values:
            config.signing_secret = values[0]


def _integration(
    name: str,
    body: Any,
    path: Path,
    where: str,
    line: int,
    environ: Mapping[str, str],
    preset_path: Sequence[str | Path],
    require: bool,
    strict: bool,
    at: Any,
    problems: list[tuple[int, str]],
    warnings: list[tuple[int, str]],
) -> Integration | None:
    label = f"integration {name!r}"
    if not isinstance(body, dict):
        problems.append((line, f"{where}: {label} must be a mapping with at least 'preset:'"))
        return None
    broken = False
    for key in body:
        if key not in INTEGRATION_KEYS:
            kline = at([key], True)
            problems.append(
                (kline, (f"{path}:{kline}: {label}: unknown key {key!r} (known: {', '.join(INTEGRATION_KEYS)})"))
            )
            broken = True
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        eline = at(["enabled"])
        problems.append((eline, f"{path}:{eline}: {label}: enabled must be true or false"))
        broken = True
    ref = body.get("preset")
    if not isinstance(ref, str) or not ref.strip():
        problems.append(
            (line, (f"{where}: {label}: 'preset:' is required (a preset name, or a path relative to this file)"))
        )
        return None
    pline = at(["preset"])
    preset = _preset(ref, path, preset_path, f"{path}:{pline}", label, pline, problems, strict)
    supplied: dict[str, Any] = {}
    places: dict[str, str] = {}
    settings_file = body.get("settings_file")
    if settings_file is not None:
        sline = at(["settings_file"])
        if not isinstance(settings_file, str) or not settings_file:
            problems.append((sline, f"{path}:{sline}: {label}: settings_file must be a path"))
            broken = True
        else:
            try:
                supplied, places = load_settings_file(path.parent / settings_file, environ)
            except SettingsError as exc:
                problems += [
                    (sline, f"{path}:{sline}: {label}: settings_file {settings_file}: {p}") for p in exc.problems
                ]
                broken = True
    inline = body.get("settings")
    if inline is not None and not isinstance(inline, dict):
        iline = at(["settings"])
        problems.append((iline, f"{path}:{iline}: {label}: settings must be a mapping of name: value"))
        broken = True
    elif inline:
        for key, value in inline.items():
            kline = at(["settings", key], True)
            supplied[key] = expand_references(value, environ)
            places[key] = f"{path}:{kline}"
            if (
                preset is not None
                and key in preset.settings
                and preset.settings[key].secret
                and isinstance(value, str)
                and value
                and not _REFERENCE.search(value)
            ):
                warnings.append(
                    (
                        kline,
                        (
                            f"{path}:{kline}: {label}: setting {key!r} is a secret written as a "
                            'literal; this file is meant to be committed: write "${NAME}" and set '
                            "NAME in the environment"
                        ),
                    )
                )
    if preset is None:
        return None
    # A missing setting is reported where it should have been written.
    settings_line = (
        at(["settings"], True)
        if "settings" in body
        else at(["settings_file"], True)
        if "settings_file" in body
        else line
    )
    for key in (*supplied, *preset.settings):
        places.setdefault(key, f"{path}:{settings_line}")
    try:
        settings = resolve(
            preset.settings,
            supplied,
            require=require and enabled is not False,
            where={k: f"{v}" for k, v in places.items()},
        )
    except SettingsError as exc:
        for problem in exc.problems:
            located = _line_in(problem, str(path))
            problems.append((located or line, _labelled(problem, label, f"{where}")))
        return None
    if broken:
        return None
    return Integration(name, preset, settings, bool(enabled), ref, line)


def _preset(
    ref: str,
    path: Path,
    preset_path: Sequence[str | Path],
    where: str,
    label: str,
    line: int,
    problems: list[tuple[int, str]],
    strict: bool = False,
) -> Preset | None:
    target = str(path.parent / ref) if ref.endswith((".yaml", ".yml")) or ref.startswith(("./", "../")) else ref
    try:
        return load_preset(target, preset_path, strict=strict)
    except PresetError as exc:
        first = (exc.problems or ["cannot be loaded"])[0]
        if "no such preset" in first:
            problems.append(
                (
                    line,
                    f"{where}: {label}: unknown preset {ref!r}{first[first.find(' (known') :]}"
                    if " (known" in first
                    else f"{where}: {label}: unknown preset {ref!r}",
                )
            )
        else:
            problems.append((line, f"{where}: {label}: preset {ref!r} has problems:"))
            problems += [(line, f"  {p}") for p in exc.problems]
        return None


def _line_in(problem: str, shown: str) -> int | None:
    if problem.startswith(shown + ":"):
        head = problem[len(shown) + 1 :].split(":", 1)[0]
        if head.isdigit():
            return int(head)
    return None


def _labelled(problem: str, label: str, fallback: str) -> str:
    """``file:line: message`` with the integration named after the place; a place-less line gets one."""
    match = re.match(r"^(\S+:\d+): (.*)$", problem)
    if match:
        return f"{match.group(1)}: {label}: {match.group(2)}"
    return f"{fallback}: {label}: {problem}"


__all__ = [
    "Integration",
    "IntegrationsConfig",
    "IntegrationsError",
    "check_integrations",
    "load_integrations",
    "name_for_preset",
    "read_integrations",
    "single",
]
