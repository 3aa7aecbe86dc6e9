"""Where the built-in presets and schemas live, installed or in a checkout.

In a wheel they ship as ``engine/presets`` and ``engine/schemas``; in a
source checkout they are the top-level ``presets/`` and ``schemas/`` that
preset authors edit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

PRESET_PATH_ENV = "SIGNAL_ENGINE_PRESET_PATH"

_PACKAGE = Path(__file__).resolve().parent.parent  # the engine package


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    return _PACKAGE.parent / name


def presets_dir() -> Path:
    return _data_dir("presets")


def schemas_dir() -> Path:
    return _data_dir("schemas")


def preset_schema_path() -> Path:
    return schemas_dir() / "preset.schema.json"


def integrations_schema_path() -> Path:
    return schemas_dir() / "integrations.schema.json"


def output_schema_path(name: str, preset_dir: Path | None = None) -> Path:
    """A schema beside the preset file first (``./lead.schema.json``), else a built-in one.

    A preset kept in a user's own repository names its contract by a path
    relative to itself; built-in presets name theirs under ``schemas/``.
    """
    if preset_dir is not None:
        local = preset_dir / name
        if local.is_file():
            return local
        if name.startswith(("./", "../")) or name.endswith(".json"):
            return local  # clearly meant as a file: report it missing there, not under schemas/
    return schemas_dir() / f"{name}.schema.json"


def builtin_presets() -> list[str]:
    root = presets_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def preset_search_path(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Folders where preset names are looked up, in order: ``extra`` (``--preset-path``),
    then ``$SIGNAL_ENGINE_PRESET_PATH``, then the built-in presets."""
    env = [p for p in os.environ.get(PRESET_PATH_ENV, "").split(os.pathsep) if p]
    return [Path(p) for p in [*extra, *env]] + [presets_dir()]


def find_preset(name_or_path: str, search_path: Sequence[str | Path] = ()) -> Path:
    """A preset name (``destination/preset``) looked up in the search path, or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    folders = preset_search_path(search_path)
    for folder in folders:
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    return folders[-1] / f"{name_or_path}.yaml"


def known_presets(search_path: Sequence[str | Path] = ()) -> list[str]:
    """Every preset name the search path offers (for messages)."""
    names: set[str] = set()
    for folder in preset_search_path(search_path):
        if folder.is_dir():
            names.update(
                p.relative_to(folder).with_suffix("").as_posix()
                for p in folder.rglob("*")
                if p.suffix in (".yaml", ".yml")
            )
    return sorted(names)
