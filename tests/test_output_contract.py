"""Output contracts: one-pass omission and truncation, and two validators that must agree.

The hot path validates with jsonschema-rs; jsonschema explains a failure and
checks schemas in ``check``. These tests hold them to the same verdict on the
same documents, and the one-pass shaping to the meaning of "omit empty
values, then cut strings to maxLength".
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pytest

from engine.cli.main import main
from engine.language import resources
from engine.pipeline.output_contract import ContractViolation, OutputContract, omit_empty

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = REPO_ROOT / "golden"
SCHEMAS = sorted(p for p in resources.schemas_dir().rglob("*.schema.json"))
OUTPUT_SCHEMAS = [p for p in SCHEMAS if p.name != "preset.schema.json"]


def contract_for(path: Path) -> OutputContract:
    name = path.relative_to(resources.schemas_dir()).as_posix().removesuffix(".schema.json")
    return OutputContract.load(name, path)


# --------------------------------------------------------------------------
# the schemas themselves (checked here and by `check`, not at every start)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_every_shipped_schema_is_a_valid_json_schema(path: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("strict", [False, True])
def test_a_broken_output_schema_is_refused_with_the_place(tmp_path: Path, strict: bool) -> None:
    path = tmp_path / "doc.schema.json"
    path.write_text(
        json.dumps({"type": "object", "properties": {"title": {"type": "string", "maxLength": -1}}}), encoding="utf-8"
    )
    with pytest.raises(ValueError) as info:
        OutputContract.load("demo/doc", path, strict=strict)
    assert str(info.value).startswith("not a valid JSON Schema at /properties/title/maxLength: ")
    assert "-1" in str(info.value)


# --------------------------------------------------------------------------
# jsonschema-rs and jsonschema agree
# --------------------------------------------------------------------------


def golden_documents() -> list[Any]:
    """Every document a golden case sends: dry-run outcomes, and every request of a delivery case."""
    documents = []
    for expected in sorted(GOLDEN.rglob("*.expected.json")):
        data = json.loads(expected.read_text(encoding="utf-8"))
        requests = (
            [o.get("request") for o in data]
            if isinstance(data, list)
            else [o.get("request") for o in data["outcomes"]] + data["exchanges"]
        )
        documents.extend(r["body"] for r in requests if isinstance(r, dict) and r.get("body") is not None)
    return documents


ODD_VALUES = (
    None,
    "",
    7,
    7.5,
    True,
    [],
    {},
    "x" * 255,
    "x" * 256,
    "é" * 256,
    "😀" * 255,
    ["a", None],
    10**30,
    -1,
    "\u0000",
    "a\ud800b",
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where values sit in a document: every key of every object, every first array item."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [prefix + (k,), *_paths(v, prefix + (k,))]]
    if isinstance(value, list) and value:
        return [prefix + (0,), *_paths(value[0], prefix + (0,))]
    return []


def _set(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    changed = copy.deepcopy(document)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return changed


def mutations(document: Any) -> list[Any]:
    """Valid and invalid neighbours of a document: types, lengths, nulls, unknown keys, odd values, anywhere."""
    out: list[Any] = []
    for path in _paths(document)[:12]:
        out.extend(_set(document, path, value) for value in ODD_VALUES)
    if isinstance(document, dict):
        for extra in ({"bogus": 1}, {"custom1": "x"}, {"custom150": "y" * 300}, {"addedAt": "not a date"}):
            out.append({**copy.deepcopy(document), **extra})
        out.extend({k: v for k, v in document.items() if k != key} for key in document)
    out += [None, [], "x", 3, {}]
    return out


def test_both_validators_give_the_same_verdict_on_every_document() -> None:
    documents = golden_documents()
    assert len(documents) >= 20, "the golden cases should send documents"
    checked = 0
    for path in OUTPUT_SCHEMAS:
        schema = json.loads(path.read_text(encoding="utf-8"))
        fast, reference = jsonschema_rs.Draft202012Validator(schema), jsonschema.Draft202012Validator(schema)
        for document in documents:
            for candidate in [document, *mutations(document)]:
                try:
                    verdict = fast.is_valid(candidate)
                except ValueError:  # a lone surrogate: the contract asks the reference (OutputContract.is_valid)
                    continue
                assert verdict == reference.is_valid(candidate), (path.name, candidate)
                checked += 1
    assert checked > 1000


def test_both_validators_give_the_same_verdict_on_presets() -> None:
    """The preset language: shipped presets and broken neighbours of them."""
    from engine.language.yaml_source import load_yaml

    schema = json.loads(resources.preset_schema_path().read_text(encoding="utf-8"))
    fast, reference = jsonschema_rs.Draft202012Validator(schema), jsonschema.Draft202012Validator(schema)
    presets = [load_yaml(p).data() for p in sorted(resources.presets_dir().rglob("*.yaml"))]
    assert presets
    for preset in presets:
        candidates = [preset]
        for key in preset:
            broken = copy.deepcopy(preset)
            del broken[key]
            candidates.append(broken)
            wrong = copy.deepcopy(preset)
            wrong[key] = 3
            candidates.append(wrong)
        extra = copy.deepcopy(preset)
        extra["bogus"] = {}
        limits = copy.deepcopy(preset)
        limits["limits"] = {"expression": {"timeout_ms": 0}}
        candidates += [extra, limits, {**preset, "limits": {"expression": {"max_string_length": 10}}}]
        for candidate in candidates:
            assert fast.is_valid(candidate) == reference.is_valid(candidate), candidate


def test_a_document_jsonschema_rs_cannot_read_is_judged_by_jsonschema() -> None:
    contract = contract_for(resources.output_schema_path("outreach/prospect-request"))
    document = {"data": {"type": "prospect", "attributes": {"emails": ["a@b.co"], "title": b"bytes"}}}
    with pytest.raises(ValueError):
        contract.validator.is_valid(document)  # jsonschema-rs refuses a value that is not JSON
    assert contract.is_valid(document) is False
    with pytest.raises(ContractViolation) as info:
        contract.check(document)
    assert info.value.field == "/data/attributes/title"


def test_an_invalid_document_is_explained_with_its_json_pointer() -> None:
    contract = contract_for(resources.output_schema_path("outreach/prospect-request"))
    with pytest.raises(ContractViolation) as info:
        contract.check({"data": {"type": "prospect", "attributes": {"emails": ["a@b.co"], "title": 5}}})
    assert info.value.field == "/data/attributes/title"
    assert str(info.value) == "/data/attributes/title: 5 is not of type 'string'"


# --------------------------------------------------------------------------
# one pass: omit empty values, then cut strings to maxLength
# --------------------------------------------------------------------------


def two_pass(document: Any, schema: Any, omit: bool, truncate: bool) -> Any:
    """The rule as it reads: first omit empty values everywhere, then cut strings where the schema says."""

    def omitted(value: Any) -> Any:
        if isinstance(value, dict):
            cleaned = {k: omitted(v) for k, v in value.items()}
            return {k: v for k, v in cleaned.items() if not empty(v)}
        if isinstance(value, list):
            return [v for v in (omitted(v) for v in value) if not empty(v)]
        return value

    def empty(value: Any) -> bool:
        return value is None or (isinstance(value, (str, list, dict)) and not value)

    def cut(value: Any, node: Any) -> Any:
        if not isinstance(node, dict):
            return value
        if isinstance(value, str):
            limit = node.get("maxLength")
            return value[:limit] if isinstance(limit, int) and len(value) > limit else value
        if isinstance(value, dict):
            return {k: cut(v, node.get("properties", {}).get(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(v, node.get("items")) for v in value]
        return value

    if omit:
        document = omitted(document)
    return cut(document, schema) if truncate else document


TRICKY_SCHEMA = {
    "type": "object",
    "properties": {
        "zero": {"type": "string", "maxLength": 0},
        "short": {"type": "string", "maxLength": 3},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 2}},
        "zeros": {"type": "array", "items": {"type": "string", "maxLength": 0}},
        "nested": {
            "type": "object",
            "properties": {
                "inner": {"type": "string", "maxLength": 1},
                "list": {"type": "array", "items": {"type": "object", "properties": {"s": {"maxLength": 2}}}},
            },
        },
    },
}


def random_value(rng: random.Random, depth: int) -> Any:
    keys = ["zero", "zeros", "short", "tags", "nested", "inner", "list", "s", "other"]
    choice = rng.randrange(10 if depth < 4 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return ""
    if choice == 2:
        return rng.choice(["a", "abcdef", " ", "😀😀😀😀", "x" * 300])
    if choice == 3:
        return rng.choice([0, 1, False, True, 0.0, 2.5])
    if choice in (4, 5):
        return rng.choice([[], {}])
    if choice in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


@pytest.mark.parametrize("omit, truncate", [(True, True), (True, False), (False, True), (False, False)])
def test_one_pass_shaping_matches_omit_then_truncate(tmp_path: Path, omit: bool, truncate: bool) -> None:
    path = tmp_path / "tricky.schema.json"
    path.write_text(json.dumps(TRICKY_SCHEMA), encoding="utf-8")
    contract = OutputContract.load("tricky", path)
    rng = random.Random(20261127)
    for _ in range(3000):
        document = random_value(rng, 0)
        before = copy.deepcopy(document)
        assert contract.shape(document, omit_empty=omit, truncate=truncate) == two_pass(
            document, TRICKY_SCHEMA, omit, truncate
        )
        assert document == before  # the input is never mutated


def test_a_string_cut_to_nothing_is_kept_because_omission_comes_first(tmp_path: Path) -> None:
    path = tmp_path / "tricky.schema.json"
    path.write_text(json.dumps(TRICKY_SCHEMA), encoding="utf-8")
    contract = OutputContract.load("tricky", path)
    shaped = contract.shape(
        {"zero": "abc", "short": "", "tags": ["abc", "", None], "zeros": ["abc", ""]}, omit_empty=True, truncate=True
    )
    assert shaped == {"zero": "", "tags": ["ab"], "zeros": [""]}
    assert omit_empty({"zero": "abc", "short": ""}) == {"zero": "abc"}


def test_check_runs_the_meta_schema_check_on_output_schemas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`signal-engine check` reports a broken output schema, located at the preset's output.schema."""
    schemas = tmp_path / "schemas"
    (schemas / "demo").mkdir(parents=True)
    (schemas / "preset.schema.json").write_bytes(resources.preset_schema_path().read_bytes())
    (schemas / "demo" / "broken.schema.json").write_text(
        json.dumps({"type": "object", "properties": {"a": {"maxLength": -1}}}), encoding="utf-8"
    )
    builtin = (resources.presets_dir() / "outreach" / "lead-capture.yaml").read_text(encoding="utf-8")
    preset = tmp_path / "preset.yaml"
    preset.write_text(builtin.replace("schema: outreach/prospect-request", "schema: demo/broken"), encoding="utf-8")
    monkeypatch.setattr(resources, "schemas_dir", lambda: schemas)
    code = main(["check", str(preset)])
    out = capsys.readouterr().out
    assert code == 1
    assert "actions.create_prospect.output.schema: cannot load output schema" in out
    assert "not a valid JSON Schema at /properties/a/maxLength" in out


def test_forbidden_key_follows_properties_items_and_refs(tmp_path: Path) -> None:
    """What `check` asks of a schema: where is a literal key of a mapping certainly refused?"""
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "data": {"type": "object", "properties": {"attributes": {"$ref": "#/$defs/attrs"}}},
            "list": {
                "type": "array",
                "items": {"type": "object", "additionalProperties": False, "properties": {"a": {}}},
            },
            "open": {"type": "object"},
            "either": {"anyOf": [{"type": "object", "additionalProperties": False}]},
        },
        "$defs": {"attrs": {"type": "object", "additionalProperties": False, "properties": {"email": {}, "name": {}}}},
    }
    path = tmp_path / "nested.schema.json"
    path.write_text(json.dumps(schema), encoding="utf-8")
    contract = OutputContract.load("nested", path)
    assert contract.forbidden_key((), "extra") == ["data", "either", "list", "open"]
    assert contract.forbidden_key((), "data") is None
    assert contract.forbidden_key(("data",), "anything") is None  # data itself is open
    assert contract.forbidden_key(("data", "attributes"), "emial") == ["email", "name"]
    assert contract.forbidden_key(("data", "attributes"), "email") is None
    assert contract.forbidden_key(("list", "[]"), "b") == ["a"]
    assert contract.forbidden_key(("open",), "b") is None
    assert contract.forbidden_key(("either",), "b") is None  # a combinator: not guessed at
    assert contract.forbidden_key(("missing",), "b") is None
