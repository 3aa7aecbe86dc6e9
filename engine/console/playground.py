"""The preset playground: YAML and events in, ``check``'s problems and each event's dry run out.

Nothing is sent and nothing is written: the preset is compiled from a
temporary file the way ``check`` compiles it (strict, past the preset
cache), and the events run through ``explain`` on a pipeline whose identity
memory lives only for this call (an identify before a track joins, as in a
dry run).

:func:`golden` runs the preset's golden cases (``golden/<preset name>/``,
as ``signal-engine golden`` finds them) against the YAML in the page: a
dry-run case as ``run --dry-run`` would, a delivery case against its
scripted responses in-process (:func:`engine.golden.run_case`), so nothing
is sent there either.
"""

from __future__ import annotations

import difflib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from .. import golden as golden_cases
from ..compile.compiler import PresetError, load_preset
from ..language.resources import find_preset, known_presets
from ..language.settings import resolve
from ..pipeline.explain import explain
from ..pipeline.prepare import Pipeline

MAX_YAML_CHARS = 200_000
MAX_EVENTS_CHARS = 1_000_000
MAX_EVENTS = 50
MAX_CASES = 200
GOLDEN_ROOT = Path("golden")  # as `signal-engine golden` defaults: below the working directory
FILE_NAME = "preset.yaml"
_LOCATION = re.compile(r"^(?P<file>.*?):(?P<line>\d+)(?::(?P<col>\d+))?: (?P<message>.*)$", re.S)

EXAMPLE_EVENTS = "\n".join(
    json.dumps(e)
    for e in (
        {
            "type": "identify",
            "messageId": "play-1",
            "userId": "user-1",
            "context": {"consent": {"canonical": {"marketing": True}}},
            "traits": {"email": "Ada.Lovelace@Example.com", "firstName": "Ada", "lastName": "Lovelace"},
        },
        {
            "type": "track",
            "event": "Demo Requested",
            "messageId": "play-2",
            "userId": "user-1",
            "context": {"consent": {"canonical": {"marketing": True}}},
        },
    )
)


def presets() -> list[str]:
    return known_presets()


def preset_source(name: str) -> str:
    """The YAML of a built-in preset (or one on the preset path), to start from."""
    if name not in known_presets():
        raise KeyError(name)
    return find_preset(name).read_text(encoding="utf-8")


def run(yaml_text: str, events_text: str) -> dict[str, Any]:
    """Compile, then dry-run every event; each problem with its line (``None`` when it has none)."""
    if len(yaml_text) > MAX_YAML_CHARS:
        return {
            "problems": [{"line": None, "message": f"the preset is longer than {MAX_YAML_CHARS:,} characters"}],
            "events": [],
        }
    events, event_problems = _events(events_text)
    with tempfile.TemporaryDirectory(prefix="signal-playground-") as folder:
        path = Path(folder) / FILE_NAME
        path.write_text(yaml_text, encoding="utf-8")
        try:
            preset = load_preset(str(path), strict=True)
        except PresetError as exc:
            return {
                "problems": [_located(p, str(path)) for p in exc.problems],
                "events": [],
                "event_problems": event_problems,
            }
    settings = resolve(preset.settings, {}, require=False)
    pipeline = Pipeline(preset, settings)
    results = []
    for index, event in enumerate(events):
        trace = explain(pipeline, event, index)
        results.append(
            {
                "index": index,
                "outcome": trace["outcome"],
                "decided_by": trace["decided_by"],
                "steps": trace["steps"],
                "request": trace["steps"].get("request"),
            }
        )
    return {"problems": [], "events": results, "event_problems": event_problems, "preset": preset.name}


def golden(yaml_text: str, preset_name: str, root: Path = GOLDEN_ROOT) -> dict[str, Any]:
    """Each golden case of ``preset_name`` run against ``yaml_text``: passed or not, with a unified diff.

    The diff goes from the case's ``.expected.json`` to what this YAML
    produces; a case that cannot run (not JSON, no ``events``) says why on
    one line, and the others still run.
    """
    folder = (root / preset_name).resolve()
    if root.resolve() not in folder.parents or not folder.is_dir():
        return {
            "preset": preset_name,
            "folder": str(root / preset_name),
            "cases": [],
            "problems": [],
            "note": f"no golden cases for {preset_name}: none in {root / preset_name}/",
        }
    with tempfile.TemporaryDirectory(prefix="signal-playground-") as temp:
        path = Path(temp) / FILE_NAME
        path.write_text(yaml_text, encoding="utf-8")
        try:
            preset = load_preset(str(path), strict=True)
        except PresetError as exc:
            return {
                "preset": preset_name,
                "folder": str(root / preset_name),
                "cases": [],
                "problems": [_located(p, str(path)) for p in exc.problems],
            }
    cases = []
    for case in golden_cases.discover(folder, preset_name)[:MAX_CASES]:
        name = case.path.relative_to(folder).with_suffix("").as_posix()
        try:
            result = golden_cases.run_case(case, {preset_name: preset})
        except (golden_cases.CaseError, ValueError, KeyError, TypeError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0].replace(str(folder) + "/", "")
            cases.append({"name": name, "passed": False, "error": first[:500], "diff": ""})
            continue
        expected = golden_cases.render(result.expected) if result.expected is not None else ""
        diff = (
            ""
            if result.passed
            else "".join(
                difflib.unified_diff(
                    expected.splitlines(True),
                    golden_cases.render(result.actual).splitlines(True),
                    f"{name}{golden_cases.EXPECTED_SUFFIX}",
                    "this preset's output",
                )
            )
        )
        cases.append(
            {
                "name": name,
                "passed": result.passed,
                "diff": diff,
                **(
                    {"error": "no expected file: `signal-engine golden --update` writes one"}
                    if result.expected is None
                    else {}
                ),
            }
        )
    passed = sum(1 for c in cases if c["passed"])
    return {
        "preset": preset_name,
        "folder": str(root / preset_name),
        "cases": cases,
        "problems": [],
        "passed": passed,
        "failed": len(cases) - passed,
    }


def _located(problem: str, path: str) -> dict[str, Any]:
    text = problem.replace(path, FILE_NAME)
    match = _LOCATION.match(text)
    if match and match.group("file") == FILE_NAME:
        return {
            "line": int(match.group("line")),
            "column": int(match.group("col") or 0) or None,
            "message": match.group("message"),
        }
    return {"line": None, "message": text}


def _events(text: str) -> tuple[list[Any], list[str]]:
    """A JSON array, one object, or NDJSON; a line that is not JSON is named and skipped."""
    if len(text) > MAX_EVENTS_CHARS:
        return [], [f"the events are longer than {MAX_EVENTS_CHARS:,} characters"]
    stripped = text.strip()
    if not stripped:
        return [], []
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except ValueError as exc:
            return [], [f"events: not a JSON array ({exc})"]
        return parsed[:MAX_EVENTS], (
            [f"only the first {MAX_EVENTS} events are run"] if len(parsed) > MAX_EVENTS else []
        )
    try:
        return [json.loads(stripped)], []
    except ValueError:
        pass
    events, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError as exc:
            problems.append(f"events line {number}: not JSON ({exc.args[0] if exc.args else exc})")
    if len(events) > MAX_EVENTS:
        problems.append(f"only the first {MAX_EVENTS} events are run")
    return events[:MAX_EVENTS], problems
