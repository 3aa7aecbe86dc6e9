"""Differential: jsonatapy and the reference jsonata-python agree on every expression the presets ship.

Expressions are discovered through the preset language itself (every value
the preset schema types as ``#/$defs/jsonata``), so a new preset, or a new
kind of expression in the language, is covered without touching this file.
Each is evaluated on the inputs the golden cases give it, and on generated
odd ones (missing traits, nulls, unicode, long strings, numbers where
strings belong), by both engines; results must be identical as JSON text
(key order, integers and floats included), or both must fail.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine import golden
from engine.compile.compiler import fast_path_plan, load_preset
from engine.language import expressions, resources
from engine.language.expressions import Expression, ExpressionError
from engine.language.settings import resolve
from engine.language.yaml_source import load_yaml
from engine.pipeline import prepare
from engine.pipeline.prepare import Pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = REPO_ROOT / "golden"
PRESETS = resources.builtin_presets()


def jsonata_sources(preset_path: Path) -> list[tuple[str, str]]:
    """(yaml path, source) of every JSONata expression in a preset file, found via the preset schema."""
    schema = json.loads(resources.preset_schema_path().read_text(encoding="utf-8"))
    schema["$defs"]["jsonata"] = {**schema["$defs"]["jsonata"], "x-jsonata": True}

    def collect(validator: Any, value: Any, instance: Any, schema_: Any) -> Iterator[jsonschema.ValidationError]:
        yield jsonschema.ValidationError("jsonata")

    Collector = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-jsonata": collect})
    data = load_yaml(preset_path).data()
    found = []
    for error in Collector(schema).iter_errors(data):
        if error.message == "jsonata" and isinstance(error.instance, str):
            found.append((".".join(str(p) for p in error.absolute_path), error.instance))
    return found


def golden_cases(preset: str) -> list[golden.GoldenCase]:
    return [case for case in golden.discover(GOLDEN) if case.preset_name == preset] if GOLDEN.is_dir() else []


def mapping_inputs(preset_name: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each expression evaluated by the pipeline saw, over every golden case of the preset."""
    seen: list[Any] = []
    original = prepare.build_document

    def recording(action: Any, expression: Any, context: Any, where: str) -> Any:
        seen.append(copy.deepcopy(context))
        return original(action, expression, context, where)

    monkeypatch.setattr(prepare, "build_document", recording)
    preset = load_preset(preset_name)
    for case in golden_cases(preset_name):
        spec = json.loads(case.path.read_text(encoding="utf-8"))
        pipeline = Pipeline(preset, resolve(preset.settings, spec.get("settings") or {}, require=False))
        for index, event in enumerate(spec["events"]):
            pipeline.dry_run(event, index)
    monkeypatch.setattr(prepare, "build_document", original)
    return seen


ODD_VALUES = [
    None,
    "",
    " ",
    "Zoë Ångström",
    "😀 emoji",
    "e\u0301 combining",
    "שלום",
    "\u0000nul",
    "x" * 10_000,
    0,
    -1,
    2.5,
    1e300,
    True,
    False,
    [],
    ["a", None],
    {},
    {"nested": {"deep": [1, "two"]}},
    "a\ud800b",
]


def odd_variants(context: dict[str, Any]) -> Iterator[Any]:
    traits = context.get("traits")
    if isinstance(traits, dict):
        for name in list(traits):
            without = copy.deepcopy(context)
            del without["traits"][name]
            yield without
            for value in ODD_VALUES:
                changed = copy.deepcopy(context)
                changed["traits"][name] = value
                yield changed
        yield {**copy.deepcopy(context), "traits": {}}
        yield {**copy.deepcopy(context), "traits": None}
    for key in list(context):
        without = copy.deepcopy(context)
        del without[key]
        yield without
    yield {**copy.deepcopy(context), "values": {"tag": None}}
    yield {**copy.deepcopy(context), "values": {"tag": "ü" * 300}}
    yield {}
    yield None


def upsert_inputs(documents: list[Any], traits: list[Any], settings: dict[str, Any]) -> Iterator[Any]:
    founds = [
        None,
        {},
        {"id": 7},
        {"id": "7", "attributes": {}},
        {"id": 4242, "attributes": {"emails": ["old@acme.com"], "tags": ["VIP"], "mobilePhones": []}},
        {"id": 1, "attributes": {"emails": "not-a-list", "tags": None}},
        {"id": 2, "attributes": {"emails": ["Zoë@acme.com", "old@acme.com"], "tags": ["Signal", "lead", "😀"]}},
    ]
    for document, trait_set in zip(documents, traits, strict=False):  # fewer traits: the rest get none
        base = {"document": document, "traits": trait_set, "settings": settings}
        yield base
        for found in founds:
            answer = {
                "status": 200,
                "headers": {"content-type": "application/json"},
                "body": {"data": [found] if found is not None else [], "results": [found]},
            }
            yield {**base, "found": found}
            yield {**base, "lookup": answer, "conflict": {**answer, "status": 409}, "found": found}
    for body in founds:
        yield {"data": [body] if body is not None else []}
    yield {"data": None}
    yield "plain text"
    yield [1, 2, 3]


def evaluate(expression: Expression, data: Any) -> tuple[str, str]:
    try:
        result = expression.evaluate(data)
    except ExpressionError:
        return ("error", "")
    return ("ok", json.dumps(result, ensure_ascii=True, allow_nan=True))


@pytest.mark.parametrize("preset_name", PRESETS)
def test_both_engines_agree_on_every_expression_of_the_preset(
    preset_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = resources.find_preset(preset_name)
    sources = jsonata_sources(path)
    preset = load_preset(preset_name)
    compiled_sources = {a.mapping.source for a in preset.actions.values()}
    assert compiled_sources <= {s for _, s in sources}, "discovery misses a mapping the compiler knows"

    captured = mapping_inputs(preset_name, monkeypatch)
    inputs: list[Any] = list(captured)
    for context in captured[::12]:  # every kind of odd value, on a spread of real inputs
        inputs.extend(odd_variants(context))
    documents, traits = [], []
    for case in golden_cases(preset_name):
        if case.expected_path.exists():
            expected = json.loads(case.expected_path.read_text(encoding="utf-8"))
            # A dry-run case is a list of outcomes; a delivery case also lists every request it sent.
            items = (
                expected
                if isinstance(expected, list)
                else expected["outcomes"] + [{"request": exchange} for exchange in expected["exchanges"]]
            )
            for item in items:
                body = (item.get("request") or {}).get("body")
                if body is not None:
                    documents.append(body)
    traits = [c.get("traits") for c in captured][: len(documents)]
    settings = resolve(preset.settings, {}, require=False).public()
    inputs.extend(upsert_inputs(documents, traits, settings))

    agreed = succeeded = 0
    for where, source in sources:
        fast_engine = Expression.compile(source, backend=expressions.FAST)
        reference_engine = Expression.compile(source, backend=expressions.REFERENCE)
        # A plain template's or predicate's fast path, in front of each engine, must give what the engines give.
        plan = fast_path_plan(source)
        with_plan = [Expression.compile(source, backend=b, plan=plan) for b in expressions.BACKENDS] if plan else []
        for data in inputs:
            fast, reference = evaluate(fast_engine, data), evaluate(reference_engine, data)
            assert fast == reference, (preset_name, where, data)
            for expression in with_plan:
                assert evaluate(expression, data) == reference, (preset_name, where, expression.backend, data)
            agreed += 1
            succeeded += fast[0] == "ok"
    assert agreed > 500 and succeeded > agreed // 4, (agreed, succeeded)


def test_the_presets_ship_golden_cases_to_compare_on() -> None:
    for preset_name in PRESETS:
        assert golden_cases(preset_name), f"{preset_name} has no golden cases"


# Published test vectors: FIPS 180-2 appendix B (SHA-256) and RFC 1321 appendix A.5 (MD5).
HASH_VECTORS = [
    ("$sha256('abc')", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        "$sha256('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq')",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    ("$sha256('')", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("$md5('')", "d41d8cd98f00b204e9800998ecf8427e"),
    ("$md5('abc')", "900150983cd24fb0d6963f7d28e17f72"),
    ("$md5('message digest')", "f96b697d7cb7938d525a2f31aaf161d0"),
    (
        "$md5('12345678901234567890123456789012345678901234567890123456789012345678901234567890')",
        "57edf4a22be3c955ac49da2e2107b67a",
    ),
]


@pytest.mark.parametrize("backend", expressions.BACKENDS)
@pytest.mark.parametrize("source, digest", HASH_VECTORS)
def test_hash_functions_give_the_published_digests_on_both_engines(backend: str, source: str, digest: str) -> None:
    assert Expression.compile(source, backend=backend).evaluate({}) == digest


HASH_CASES = [
    ('{"h": $sha256(traits.email), "n": 1}', {"traits": {}}),  # undefined in: the key is left out
    ('{"h": $md5(traits.email)}', {"traits": {"email": None}}),
    ("$sha256(traits.email)", {"traits": {"email": 5}}),  # not a string: a signature error
    ("$md5(traits.email)", {"traits": {"email": ["a@b.c"]}}),
    ("$sha256($lowercase($trim(traits.email)))", {"traits": {"email": " Zoë@Example.COM "}}),  # UTF-8 bytes
    ("traits.email.$sha256()", {"traits": {"email": "a@b.c"}}),  # the context binds
    ("$map(traits.emails, $md5)", {"traits": {"emails": ["a", "b"]}}),
    ("$eval('$sha256(\"abc\")')", {}),
    ("$sha256($replace('+44 20 7946 0958', /[^0-9]/, ''))", {}),  # E.164 digits without '+'
    ("($sha256 := function($s){ 'mine' }; $sha256('abc'))", {}),  # a binding of the preset's own wins
]


@pytest.mark.parametrize("source, data", HASH_CASES)
def test_both_engines_agree_on_the_hash_functions(source: str, data: Any) -> None:
    fast = evaluate(Expression.compile(source, backend=expressions.FAST), data)
    reference = evaluate(Expression.compile(source, backend=expressions.REFERENCE), data)
    assert fast == reference


def test_hash_functions_on_the_forms_the_conversion_apis_document() -> None:
    """Undefined stays undefined (an optional trait is left out, not hashed as ""); the rest as hashlib says."""
    import hashlib

    run = lambda source, data: Expression.compile(source).evaluate(data)  # noqa: E731
    assert run('{"h": $sha256(traits.email), "n": 1}', {"traits": {}}) == {"n": 1}
    assert (
        run("$sha256($lowercase($trim(e)))", {"e": " Zoë@Example.COM "})
        == hashlib.sha256("zoë@example.com".encode()).hexdigest()
    )
    assert (
        run("$md5($lowercase(e))", {"e": "Urist.McVankab@freddiesjokes.com"})
        == hashlib.md5(b"urist.mcvankab@freddiesjokes.com").hexdigest()
    )
    with pytest.raises(ExpressionError, match="T0410"):
        run("$sha256(n)", {"n": 5})
