"""Golden cases: the exact outcome, document included, for every input.

A case is ``<name>.json`` holding the input events (and optional settings);
its contract is ``<name>.expected.json``, the list of outcomes exactly as
``signal-engine run --dry-run`` prints them. The directory under ``golden/``
names the preset (``golden/outreach/lead-capture/`` → ``outreach/lead-capture``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .language.compiler import load_preset
from .language.model import Preset
from .language.settings import resolve
from .pipeline.prepare import Pipeline

EXPECTED_SUFFIX = ".expected.json"


@dataclass
class GoldenCase:
    path: Path
    preset_name: str

    @property
    def name(self) -> str:
        return f"{self.preset_name}/{self.path.stem}"

    @property
    def expected_path(self) -> Path:
        return self.path.with_name(self.path.stem + EXPECTED_SUFFIX)

    @property
    def preset_ref(self) -> str:
        """The preset file beside the golden tree (``golden/../presets/<name>.yaml``), else the built-in name.

        So a project laid out like this repository (``presets/``, ``golden/``)
        runs its own cases wherever it lives.
        """
        top = next((parent for parent in self.path.parents if parent.name == "golden"), None)
        sibling = top.parent / "presets" / f"{self.preset_name}.yaml" if top is not None else None
        return str(sibling) if sibling is not None and sibling.is_file() else self.preset_name


@dataclass
class GoldenResult:
    case: GoldenCase
    actual: list[dict[str, Any]]
    expected: list[dict[str, Any]] | None

    @property
    def passed(self) -> bool:
        # Compared as rendered text, so key order (part of the contract) counts.
        return self.expected is not None and render(self.expected) == render(self.actual)

    def diff(self) -> str:
        want = render(self.expected) if self.expected is not None else ""
        got = render(self.actual)
        return "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            str(self.case.expected_path), "actual output"))


def render(outcomes: list[dict[str, Any]] | None) -> str:
    return json.dumps(outcomes, indent=2, ensure_ascii=False) + "\n"


def discover(root: Path) -> list[GoldenCase]:
    """Every case below ``root`` (a golden/ tree, a preset's folder, or one case file)."""
    root = root.resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if not p.name.endswith(EXPECTED_SUFFIX))
    cases = []
    for file in files:
        top = next((parent for parent in file.parents if parent.name == "golden"), None)
        if top is None:
            raise ValueError(f"{file}: golden cases must live under a golden/<destination>/<preset>/ folder")
        cases.append(GoldenCase(file, file.parent.relative_to(top).as_posix()))
    return cases


def run_case(case: GoldenCase, presets: dict[str, Preset] | None = None) -> GoldenResult:
    presets = presets if presets is not None else {}
    if case.preset_name not in presets:
        presets[case.preset_name] = load_preset(case.preset_ref)
    preset = presets[case.preset_name]
    spec = json.loads(case.path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or not isinstance(spec.get("events"), list):
        raise ValueError(f"{case.path}: a golden case is an object with an 'events' list")
    pipeline = Pipeline(preset, resolve(preset.settings, spec.get("settings") or {}, require=False))
    actual = [pipeline.dry_run(event, i).to_dict() for i, event in enumerate(spec["events"])]
    expected = None
    if case.expected_path.exists():
        expected = json.loads(case.expected_path.read_text(encoding="utf-8"))
    return GoldenResult(case, actual, expected)


def update(result: GoldenResult) -> bool:
    """Write the actual outcomes as the new contract; True if the file changed."""
    text = render(result.actual)
    path = result.case.expected_path
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True
