"""Golden cases: every case under golden/ must produce exactly its expected outcomes.

Each ``<name>.expected.json`` is a contract written from the product page
(the seed spec), not a snapshot: a mismatch means the engine or the preset
changed behaviour, and the diff shows how. Comparison is on the rendered
JSON, so the order of keys (e.g. attribute order in the prospect document)
is part of the contract too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import outcome as oc
from engine.language import expressions
from engine.golden import GoldenCase, discover, render, run_case

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
CASES = discover(GOLDEN) if GOLDEN.is_dir() else []

# "Event Mapping" table of the product page, Lead Capture preset: Signal event -> tag applied.
EVENT_MAPPING = {
    "Lead Submitted": "lead",
    "Form Submitted": "form",
    "Signed Up": "signup",
    "Demo Requested": "demo-request",
}


@pytest.fixture(scope="module")
def presets() -> dict:
    """Loaded presets, one set per JSONata engine."""
    return {backend: {} for backend in expressions.BACKENDS}


@pytest.mark.parametrize("backend", expressions.BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case(case: GoldenCase, backend: str, presets: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case, on both JSONata engines: the fast default and the reference."""
    monkeypatch.setenv(expressions.BACKEND_ENV, backend)
    result = run_case(case, presets[backend])
    assert result.expected is not None, f"{case.expected_path} is missing"
    if render(result.expected) != render(result.actual):
        pytest.fail(f"golden mismatch for {case.name}:\n{result.diff()}", pytrace=False)


def test_golden_cases_exist() -> None:
    assert CASES, f"no golden cases under {GOLDEN}"


def _expected_outcomes() -> list[tuple[GoldenCase, dict]]:
    pairs = []
    for case in CASES:
        if case.expected_path.exists():
            for item in json.loads(case.expected_path.read_text(encoding="utf-8")):
                pairs.append((case, item))
    return pairs


def test_every_drop_reason_is_pinned() -> None:
    seen = {item.get("reason") for _, item in _expected_outcomes() if item.get("outcome") == oc.DROPPED}
    missing = [reason for reason in oc.DROP_REASONS if reason not in seen]
    assert not missing, f"no golden case pins drop reason(s): {', '.join(missing)}"


def test_every_event_mapping_row_is_pinned() -> None:
    """One case per row of the Event Mapping table: the track event sent, tagged as the table says."""
    covered = set()
    for case in CASES:
        spec = json.loads(case.path.read_text(encoding="utf-8"))
        expected = json.loads(case.expected_path.read_text(encoding="utf-8")) if case.expected_path.exists() else []
        by_index = {item.get("index"): item for item in expected}
        for index, event in enumerate(spec.get("events", [])):
            if not isinstance(event, dict) or event.get("type") != "track":
                continue
            if not isinstance(event.get("event"), str) or event["event"] not in EVENT_MAPPING:
                continue
            item = by_index.get(index, {})
            if item.get("outcome") != oc.WOULD_SEND:
                continue
            tags = item["request"]["body"]["data"]["attributes"].get("tags")
            if tags == ["Signal", EVENT_MAPPING[event["event"]]]:
                covered.add(event["event"])
    missing = [name for name in EVENT_MAPPING if name not in covered]
    assert not missing, f"no golden case sends (with its table tag) the mapped event(s): {', '.join(missing)}"
