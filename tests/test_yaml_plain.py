"""libyaml's fast read of a preset (engine/language/yaml_plain.py) gives what ruamel.yaml's round trip gives, or nothing.

ruamel.yaml (engine/language/yaml_source.py) is the judge: for every file
the fast read accepts, the data must be equal, with the same types, to the
round trip's; every file it is not sure of must go to the round trip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.language import yaml_plain, yaml_source

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO_ROOT / "presets").rglob("*.yaml"))


def shape(value: Any) -> Any:
    """The value with every type spelled out: True == 1 and 1 == 1.0 must not hide a difference."""
    if isinstance(value, dict):
        return {shape(k): shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return (type(value).__name__, value)


def round_trip(text: str) -> Any:
    return yaml_source.load_yaml("preset.yaml", text).data()


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(REPO_ROOT / "presets")))
def test_every_shipped_preset_is_read_fast_and_the_same(preset: Path) -> None:
    text = preset.read_text(encoding="utf-8")
    fast = yaml_plain.plain_data(text)
    assert fast is not None
    assert shape(fast) == shape(round_trip(text))


# Plain scalars as YAML 1.2's core schema reads them (https://yaml.org/spec/1.2.2/#1032-tag-resolution),
# and the YAML 1.1 spellings it no longer reads as booleans, numbers or null.
SCALARS = [
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "Yes",
    "NO",
    "true",
    "True",
    "TRUE",
    "tRue",
    "false",
    "False",
    "FALSE",
    "null",
    "Null",
    "NULL",
    "~",
    "nul",
    "None",
    "nope",
    "t",
    "f",
    "0",
    "-0",
    "+0",
    "00",
    "007",
    "012",
    "0o17",
    "0x1F",
    "0b101",
    "1_000",
    "1e3",
    "1E3",
    "1.",
    "1.5",
    "-1.5",
    "+1.5",
    ".5",
    "-.5",
    ".inf",
    "-.Inf",
    ".nan",
    ".NaN",
    "0.1e-3",
    "9999999999999999999999",
    "3.141592653589793238",
    "1e400",
    "NaN",
    "Infinity",
    "2024-01-01",
    "2024-01-01T10:00:00Z",
    "12:30",
    "1:20:30",
    "=",
    "<<",
    "<a>",
    "123abc",
    "1.2.3",
    "-x",
    "--",
    "---x",
    "...",
    "'q'",
    '"q"',
    "''",
    '""',
    "a:b",
    "http://x/y?a=1#f",
]
DOCUMENTS = [
    *(f"k: {s}\n" for s in SCALARS),
    *(f"k:\n  - {s}\n" for s in SCALARS),
    *(f"{s}: v\n" for s in SCALARS),
    *(f"k: [{s}]\n" for s in SCALARS),
    *(f"k: {{a: {s}}}\n" for s in SCALARS),
    "k:\n",
    "k: \n  a: 1\n  b: [1, {c: d}]\n",
    'k: "\\/\\x41\\u00e9\\N\\e\\ \\_\\L\\P\\v\\0\\a"\n',
    "k: >\n  x\n  y\n\n  z\n",
    "k: |-\n  x\n   y\n",
    "k: |+\n  x\n\n",
    "k: x\n  y\n",
    "k: 'it''s'\n",
    "k: 'a\n\n  b'\n",
    "---\nk: v\n...\n",
    "k: v # comment\n# more\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_what_the_fast_read_accepts_is_what_the_round_trip_gives(text: str) -> None:
    fast = yaml_plain.plain_data(text)
    if fast is not None:
        assert shape(fast) == shape(round_trip(text))


@pytest.mark.parametrize(
    "text",
    [
        "k: 1_000\n",  # numbers written other than plainly, and timestamps
        "k: 0x1F\n",
        "k: 2024-01-01\n",
        "k: 1\nk: 2\n",  # a duplicate key: the round trip refuses it, located
        "k: {a: 1, a: 2}\n",
        "1: a\n'1': b\n",
        "k: &x 1\nj: *x\n",  # anchors and aliases: the round trip counts what they expand to
        "k: !!str 1\n",  # a tag
        "<<: {a: 1}\n",  # a merge key
        "%YAML 1.1\n---\nk: yes\n",  # another YAML version
        "k: 1\n---\nj: 2\n",  # two documents
        "- 1\n",  # not a mapping
        "",
        "k:\tv\n",  # a tab
        "k: 'x\n",  # not YAML at all
        "k: b: c\n",
        "? [a]\n: 1\n",  # a key that is not a scalar
        "k: " + "[" * 300 + "]" * 300 + "\n",
        "k:\n" + "".join("  " * i + "- \n" for i in range(1, 120)),  # deeply nested
    ],
)
def test_what_it_is_not_sure_of_goes_to_the_round_trip(text: str) -> None:
    assert yaml_plain.plain_data(text) is None


def test_its_bounds_are_the_round_trips() -> None:
    assert yaml_plain.MAX_YAML_VALUES == yaml_source.MAX_YAML_VALUES
    assert yaml_plain.MAX_FLOW_DEPTH == yaml_source.MAX_FLOW_DEPTH


def test_too_many_values_go_to_the_round_trip() -> None:
    text = "k:\n" + "".join(f"  - {i}\n" for i in range(yaml_plain.MAX_YAML_VALUES + 1))
    assert yaml_plain.plain_data(text) is None
    small = "k:\n" + "".join(f"  - {i}\n" for i in range(100))
    assert yaml_plain.plain_data(small) == {"k": list(range(100))}
