"""Where the built-in presets and schemas live, installed or in a checkout.

In a wheel they ship as ``engine/presets`` and ``engine/schemas``; in a
source checkout they are the top-level ``presets/`` and ``schemas/`` that
preset authors edit.
"""

from __future__ import annotations

from pathlib import Path

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


def output_schema_path(name: str) -> Path:
    return schemas_dir() / f"{name}.schema.json"


def builtin_presets() -> list[str]:
    root = presets_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def find_preset(name_or_path: str) -> Path:
    """A built-in name such as ``outreach/lead-capture``, or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return presets_dir() / f"{name_or_path}.yaml"
