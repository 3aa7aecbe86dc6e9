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


def _tags(preset: str, body: dict, settings: dict) -> object:
    """Where each built-in preset puts the table's tags ("Signal" plus the event's tag), as a list."""
    if preset == "outreach/lead-capture":
        return body["data"]["attributes"].get("tags")
    if preset == "salesloft/people":
        return body.get("tags")
    if preset == "hubspot/contacts":  # a multiple-checkbox property named by the user, ';'-separated
        value = body["properties"].get(settings.get("tags_property", ""))
        return value.split(";") if isinstance(value, str) else None
    if preset == "close/leads":  # a multiple-choice contact custom field named by the user
        return body["contacts"][0].get(f"custom.{settings.get('tags_field_id', '')}")
    raise AssertionError(f"tests/test_golden.py does not know where {preset} puts its tags")


def _outcomes(expected: object) -> list:
    """The outcomes of a case: the list itself (dry run) or its 'outcomes' (delivery case)."""
    return expected.get("outcomes", []) if isinstance(expected, dict) else list(expected or [])


@pytest.fixture(scope="module")
def presets() -> dict:
    return {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case(case: GoldenCase, presets: dict) -> None:
    result = run_case(case, presets)
    assert result.expected is not None, f"{case.expected_path} is missing"
    if render(result.expected) != render(result.actual):
        pytest.fail(f"golden mismatch for {case.name}:\n{result.diff()}", pytrace=False)


def test_golden_cases_exist() -> None:
    assert CASES, f"no golden cases under {GOLDEN}"


def _expected_outcomes() -> list[tuple[GoldenCase, dict]]:
    pairs = []
    for case in CASES:
        if case.expected_path.exists():
            for item in _outcomes(json.loads(case.expected_path.read_text(encoding="utf-8"))):
                pairs.append((case, item))
    return pairs


def test_every_drop_reason_is_pinned() -> None:
    seen = {item.get("reason") for _, item in _expected_outcomes() if item.get("outcome") == oc.DROPPED}
    missing = [reason for reason in oc.DROP_REASONS if reason not in seen]
    assert not missing, f"no golden case pins drop reason(s): {', '.join(missing)}"


@pytest.mark.parametrize("preset", sorted({c.preset_name for c in CASES}))
def test_every_event_mapping_row_is_pinned(preset: str) -> None:
    """One dry-run case per row of the Event Mapping table: the track event sent, tagged as the table says."""
    covered = set()
    for case in (c for c in CASES if c.preset_name == preset):
        spec = json.loads(case.path.read_text(encoding="utf-8"))
        expected = json.loads(case.expected_path.read_text(encoding="utf-8")) if case.expected_path.exists() else []
        by_index = {item.get("index"): item for item in _outcomes(expected)}
        for index, event in enumerate(spec.get("events", [])):
            if not isinstance(event, dict) or event.get("type") != "track":
                continue
            if not isinstance(event.get("event"), str) or event["event"] not in EVENT_MAPPING:
                continue
            item = by_index.get(index, {})
            if item.get("outcome") != oc.WOULD_SEND:
                continue
            if _tags(preset, item["request"]["body"], spec.get("settings") or {}) == ["Signal", EVENT_MAPPING[event["event"]]]:
                covered.add(event["event"])
    missing = [name for name in EVENT_MAPPING if name not in covered]
    assert not missing, f"no {preset} golden case sends (with its table tag) the mapped event(s): {', '.join(missing)}"
