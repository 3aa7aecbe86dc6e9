"""Transform stage: normalisers, mapping, output contract, templates and the JSONata adapter."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.language import expressions, resources
from engine.language.expressions import Expression, ExpressionError
from engine.language.settings import resolve
from engine.language.templates import Template, TemplateError
from engine.pipeline.normalisers import NORMALISERS, InvalidValue, country, email, phone_e164, text
from engine.pipeline.output_contract import ContractViolation, OutputContract, omit_empty
from engine.pipeline.prepare import Pipeline
from fakes import SEED_DEMO_REQUESTED_PAYLOAD

REFUSED = object()  # the normaliser refuses the value: InvalidValue, and the trait is left out

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILTIN = REPO_ROOT / "presets" / "outreach" / "lead-capture.yaml"
CONSENTED = {"consent": {"canonical": {"marketing": True}}}


def pipeline(preset_path: str = "outreach/lead-capture", **settings: Any) -> Pipeline:
    preset = load_preset(preset_path)
    return Pipeline(preset, resolve(preset.settings, settings, require=False))


def edited_preset(tmp_path: Path, *edits: tuple[str, str]) -> str:
    text_ = BUILTIN.read_text(encoding="utf-8")
    for old, new in edits:
        assert text_.count(old) == 1, old
        text_ = text_.replace(old, new)
    path = tmp_path / "preset.yaml"
    path.write_text(text_, encoding="utf-8")
    return str(path)


def demo_requested(traits: dict[str, Any]) -> dict[str, Any]:
    return {"type": "track", "event": "Demo Requested", "userId": "user-123", "context": CONSENTED, "traits": traits}


def prospect_contract() -> OutputContract:
    return OutputContract.load("outreach/prospect-request", resources.output_schema_path("outreach/prospect-request"))


# --------------------------------------------------------------------------
# the product page's worked example
# --------------------------------------------------------------------------


def test_seed_example_demo_requested_produces_the_documented_payload() -> None:
    p = pipeline()
    p.dry_run(
        {
            "type": "identify",
            "userId": "user-123",
            "traits": {
                "email": "jane.doe@acme.com",
                "firstName": "Jane",
                "lastName": "Doe",
                "company": "Acme Inc",
                "title": "Head of Growth",
                "phone": "+44 7700 900123",
            },
        }
    )
    result = p.dry_run({"type": "track", "event": "Demo Requested", "userId": "user-123", "context": CONSENTED})
    assert result.outcome == oc.WOULD_SEND
    assert result.request is not None
    assert result.request["method"] == "POST"
    assert result.request["url"] == "https://api.outreach.io/api/v2/prospects"
    assert result.request["headers"]["Content-Type"] == "application/vnd.api+json"
    assert result.request["body"] == SEED_DEMO_REQUESTED_PAYLOAD


# --------------------------------------------------------------------------
# normalisers
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Jane.Doe@ACME.com ", "jane.doe@acme.com"),
        ("\tA@B.CO\n", "a@b.co"),
        ("x@y.co.uk", "x@y.co.uk"),
        (None, None),
        ("", None),
        ("   ", None),
    ],
)
def test_email_trimmed_and_lower_cased(raw: Any, expected: str | None) -> None:
    assert email(raw) == expected


@pytest.mark.parametrize("raw", ["not-an-email", "a@b", "a b@c.com", "a@@b.com", "@acme.com", 42, ["a@b.co"]])
def test_email_invalid(raw: Any) -> None:
    with pytest.raises(InvalidValue):
        email(raw)


@pytest.mark.parametrize(
    "raw, traits, expected",
    [
        ("+44 7700 900123", None, "+447700900123"),  # possible but not "valid" (reserved drama range)
        ("+1 (415) 555-2671", None, "+14155552671"),
        ("07700 900123", {"country": "GB"}, "+447700900123"),
        ("07700 900123", {"country": " gb "}, "+447700900123"),
        ("(415) 555-2671", {"country": "US"}, "+14155552671"),
        ("07700 900123", None, REFUSED),  # national number, no region
        (
            "07700 900123",
            {"country": "United Kingdom"},
            "+447700900123",
        ),  # region_from goes through the country normaliser
        ("07700 900123", {"country": "Atlantis"}, REFUSED),  # an unknown country only costs the default region
        ("not a phone", None, REFUSED),
        ("+1 555", None, REFUSED),  # too short to be possible
        ("", None, None),
        (None, None, None),
        (True, None, REFUSED),
    ],
)
def test_phone_e164(raw: Any, traits: dict[str, Any] | None, expected: str | None) -> None:
    """A present but unusable phone is refused (InvalidValue): the trait is left out and named in the outcome."""
    if expected is REFUSED:
        with pytest.raises(InvalidValue):
            phone_e164(raw, traits, "country")
    else:
        assert phone_e164(raw, traits, "country") == expected


def test_phone_region_is_ignored_without_region_from_option() -> None:
    with pytest.raises(InvalidValue):
        phone_e164("07700 900123", {"country": "GB"}, None)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Acme Inc  ", "Acme Inc"),
        (42, "42"),
        (1.5, "1.5"),
        ("", None),
        ("   ", None),
        (None, None),
        (True, REFUSED),
        (False, REFUSED),
        (["a"], REFUSED),
        ({"a": 1}, REFUSED),
    ],
)
def test_text(raw: Any, expected: str | None) -> None:
    if expected is REFUSED:
        with pytest.raises(InvalidValue):
            text(raw)
    else:
        assert text(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("GB", "GB"),
        ("gb", "GB"),
        ("GBR", "GB"),
        ("826", "GB"),
        ("United Kingdom", "GB"),
        ("  united kingdom ", "GB"),
        ("UK", "GB"),
        ("Germany", "DE"),
        ("DEU", "DE"),
        ("United States", "US"),
        ("USA", "US"),
        ("Côte d’Ivoire", "CI"),
        ("Cote d'Ivoire", "CI"),
        ("Viet Nam", "VN"),
        ("", None),
        (None, None),
        ("Atlantis", REFUSED),
        ("G", REFUSED),
        ({"code": "GB"}, REFUSED),
    ],
)
def test_country_gives_iso_alpha_2(raw: Any, expected: str | None) -> None:
    """ISO 3166-1: GB is the United Kingdom (alpha-3 GBR, numeric 826); DE Germany; US the United States."""
    if expected is REFUSED:
        with pytest.raises(InvalidValue):
            country(raw)
    else:
        assert country(raw) == expected


def test_normaliser_names_are_the_schema_enum() -> None:
    schema = json.loads((resources.schemas_dir() / "preset.schema.json").read_text(encoding="utf-8"))
    assert set(NORMALISERS) == set(schema["$defs"]["trait"]["properties"]["normalise"]["enum"])
    assert set(NORMALISERS) == {"text", "email", "phone_e164", "country"}


def test_pipeline_normalises_traits_before_mapping() -> None:
    result = pipeline().dry_run(
        demo_requested(
            {
                "email": "  Jane.Doe@Acme.COM",
                "firstName": "  Jane ",
                "phone": "07700 900123",
                "country": "GB",
                "company": 1234,
            }
        )
    )
    attrs = result.request["body"]["data"]["attributes"] if result.request else {}
    assert attrs["emails"] == ["jane.doe@acme.com"]
    assert attrs["firstName"] == "Jane"
    assert attrs["name"] == "Jane"
    assert attrs["mobilePhones"] == ["+447700900123"]
    assert attrs["addressCountry"] == "GB"
    assert attrs["company"] == "1234"


def test_unparseable_phone_is_left_out_not_fatal() -> None:
    result = pipeline().dry_run(demo_requested({"email": "a@b.co", "phone": "call me maybe"}))
    assert result.outcome == oc.WOULD_SEND
    assert result.request is not None
    assert "mobilePhones" not in result.request["body"]["data"]["attributes"]


def test_undeclared_traits_never_reach_the_document() -> None:
    result = pipeline().dry_run(demo_requested({"email": "a@b.co", "password": "hunter22", "custom1": "x"}))
    assert result.request is not None
    assert set(result.request["body"]["data"]["attributes"]) == {"emails", "tags"}
    assert "hunter22" not in repr(result.to_dict())


# --------------------------------------------------------------------------
# omit_empty, truncation, contract
# --------------------------------------------------------------------------


def test_omit_empty_recursively() -> None:
    doc = {
        "a": None,
        "b": "",
        "c": [],
        "d": {},
        "e": 0,
        "f": False,
        "g": [None, "", "x", [], {}],
        "h": {"x": None, "y": {"z": ""}},
        "i": " ",
        "j": 0.0,
    }
    assert omit_empty(doc) == {"e": 0, "f": False, "g": ["x"], "i": " ", "j": 0.0}


def test_pipeline_omits_empty_attributes() -> None:
    result = pipeline().dry_run(
        demo_requested({"email": "a@b.co", "firstName": "Jane", "lastName": "", "title": None, "phone": "nonsense"})
    )
    assert result.request is not None
    assert result.request["body"]["data"]["attributes"] == {
        "emails": ["a@b.co"],
        "firstName": "Jane",
        "name": "Jane",
        "tags": ["Signal", "demo-request"],
    }


def test_truncate_to_schema_max_length() -> None:
    contract = prospect_contract()
    doc = {
        "data": {
            "type": "prospect",
            "attributes": {
                "emails": ["a@b.co"],
                "title": "t" * 300,
                "firstName": "f" * 256,
                "lastName": "l" * 255,
                "name": "n" * 300,
                "tags": ["x" * 300],
            },
        }
    }
    out = contract.truncate(doc)["data"]["attributes"]
    assert out["title"] == "t" * 255
    assert out["firstName"] == "f" * 255
    assert out["lastName"] == "l" * 255
    assert out["name"] == "n" * 300  # no maxLength in the schema
    assert out["tags"] == ["x" * 300]
    contract.check(contract.truncate(doc))
    assert doc["data"]["attributes"]["title"] == "t" * 300  # input not mutated


def test_pipeline_truncates_long_titles() -> None:
    result = pipeline().dry_run(demo_requested({"email": "a@b.co", "title": "T" * 400}))
    assert result.request is not None
    attrs = result.request["body"]["data"]["attributes"]
    assert attrs["title"] == "T" * 255
    assert attrs["occupation"] == "T" * 255


def test_without_truncation_a_long_title_is_a_contract_violation(tmp_path: Path) -> None:
    path = edited_preset(tmp_path, ("truncate_to_schema: true", "truncate_to_schema: false"))
    result = pipeline(path).dry_run(demo_requested({"email": "a@b.co", "title": "T" * 400}))
    assert result.outcome == oc.FAILED
    assert result.cause == "output_invalid"
    assert "/data/attributes/occupation" in (result.detail or "")


@pytest.mark.parametrize(
    "attributes, pointer",
    [
        ({"emails": "a@b.co"}, "/data/attributes/emails"),
        ({"emails": ["a@b.co"], "tags": ["x", 3]}, "/data/attributes/tags/1"),
        ({"emails": ["a@b.co"], "bogus": 1}, "/data/attributes"),
        ({"emails": []}, "/data/attributes/emails"),
    ],
)
def test_contract_violation_names_the_field(attributes: dict[str, Any], pointer: str) -> None:
    with pytest.raises(ContractViolation) as info:
        prospect_contract().check({"data": {"type": "prospect", "attributes": attributes}})
    assert info.value.field == pointer
    assert str(info.value).startswith(f"{pointer}: ")


def test_contract_violation_in_the_pipeline_is_a_failed_outcome_naming_the_field(tmp_path: Path) -> None:
    path = edited_preset(tmp_path, ('"emails": [traits.email],', '"emails": traits.email,'))
    result = pipeline(path).dry_run(demo_requested({"email": "a@b.co"}), 3)
    assert result.outcome == oc.FAILED
    assert result.index == 3
    assert result.cause == "output_invalid"
    assert "actions.create_prospect.mapping" in (result.detail or "")
    assert "/data/attributes/emails" in (result.detail or "")


def test_mapping_runtime_error_is_a_failed_outcome(tmp_path: Path) -> None:
    path = edited_preset(tmp_path, ('"title": traits.title,', '"title": $error("boom"),'))
    result = pipeline(path).dry_run(demo_requested({"email": "a@b.co"}))
    assert result.outcome == oc.FAILED
    assert result.cause == "mapping_error"
    assert "boom" in (result.detail or "")


# --------------------------------------------------------------------------
# templates
# --------------------------------------------------------------------------


def test_template_names_its_placeholders_for_the_compiler_to_check() -> None:
    """Which placeholders a place allows is checked by the compiler (tests/test_language_check.py)."""
    template = Template.compile("{settings.base_url}/x/{found.id}")
    assert template.fields == (("settings", "base_url"), ("found", "id"))
    assert template.settings_used() == ["base_url"]


@pytest.mark.parametrize("source", ["{settings.base_url/x", "{settings.base_url}}/x", "x/{ id }"])
def test_template_rejects_malformed_braces(source: str) -> None:
    with pytest.raises(TemplateError):
        Template.compile(source)


def test_template_percent_encodes_values_outside_settings() -> None:
    template = Template.compile("{settings.base_url}/api/v2/prospects/{found.id}")
    url = template.render({"settings": {"base_url": "https://api.example.com"}, "found": {"id": "1/2 ?#&=%"}})
    assert url == "https://api.example.com/api/v2/prospects/1%2F2%20%3F%23%26%3D%25"
    assert template.render({"settings": {"base_url": "http://127.0.0.1:8080"}, "found": {"id": 42}}) == (
        "http://127.0.0.1:8080/api/v2/prospects/42"
    )


def test_template_missing_value_is_an_error() -> None:
    template = Template.compile("{settings.base_url}/p/{found.id}")
    with pytest.raises(TemplateError) as info:
        template.render({"settings": {"base_url": "https://x.io"}, "found": {}})
    assert "{found.id}" in str(info.value)


def test_pipeline_url_uses_the_base_url_setting() -> None:
    result = pipeline(base_url="http://127.0.0.1:9000/").dry_run(demo_requested({"email": "a@b.co"}))
    assert result.request is not None
    assert result.request["url"] == "http://127.0.0.1:9000/api/v2/prospects"


# --------------------------------------------------------------------------
# the JSONata adapter
# --------------------------------------------------------------------------


@pytest.fixture(params=expressions.BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every adapter promise holds for both JSONata engines."""
    return request.param


def test_expression_evaluates(backend: str) -> None:
    expr = Expression.compile('{"n": $count(items), "first": items[0].name}', backend=backend)
    assert expr.evaluate({"items": [{"name": "a"}, {"name": "b"}]}) == {"n": 2, "first": "a"}
    assert expr.source.startswith('{"n"')


@pytest.mark.parametrize(
    "source, offending",
    [
        ('{"a": 1 +}', "}"),
        ("[1, 2 +]", "]"),
    ],
)
def test_compile_error_reports_a_position(source: str, offending: str, backend: str) -> None:
    with pytest.raises(ExpressionError) as info:
        Expression.compile(source, backend=backend)
    position = info.value.position
    assert position is not None
    # The position is just past the offending character (the loader subtracts one).
    assert source[position - 1] == offending


def test_compile_error_without_closing_paren(backend: str) -> None:
    with pytest.raises(ExpressionError) as info:
        Expression.compile("$join(['a'], ", backend=backend)
    assert str(info.value)
    assert "\n" not in str(info.value)


def test_same_compiled_expression_evaluated_500_times(backend: str) -> None:
    # jsonata-python keeps its depth/timeout counters on the compiled object;
    # a naive adapter fails after a few dozen calls.
    expr = Expression.compile(
        '($f := function($n){ $n = 0 ? 0 : 1 + $f($n - 1) }; {"d": $f(depth), "t": tag})', backend=backend
    )
    for i in range(500):
        assert expr.evaluate({"depth": 20, "tag": i}) == {"d": 20, "t": i}


def test_failures_do_not_poison_later_evaluations(backend: str) -> None:
    expr = Expression.compile("($f := function($n){ $n = 0 ? 0 : 1 + $f($n - 1) }; $f(depth))", backend=backend)
    for _ in range(20):
        with pytest.raises(ExpressionError):
            expr.evaluate({"depth": 100_000})
    assert expr.evaluate({"depth": 30}) == 30


def test_timeout_is_per_evaluation_not_per_compile(backend: str) -> None:
    expr = Expression.compile("$sum(items)", expressions.ExpressionLimits(timeout_ms=100), backend)
    deadline = time.monotonic() + 0.4
    calls = 0
    while time.monotonic() < deadline:
        assert expr.evaluate({"items": [1, 2, 3]}) == 6
        calls += 1
    assert calls > 1


def test_infinite_recursion_is_stopped(backend: str) -> None:
    expr = Expression.compile("($f := function($x){ 1 + $f($x) }; $f(1))", backend=backend)
    started = time.monotonic()
    with pytest.raises(expressions.ExpressionLimitError):
        expr.evaluate({})
    assert time.monotonic() - started < 5


def test_infinite_tail_recursion_is_stopped_by_the_timeout(backend: str) -> None:
    expr = Expression.compile(
        "($f := function($x){ $f($x) }; $f(1))", expressions.ExpressionLimits(timeout_ms=200), backend
    )
    started = time.monotonic()
    with pytest.raises(expressions.ExpressionLimitError) as info:
        expr.evaluate({})
    assert time.monotonic() - started < 5
    assert info.value.limit == "timeout_ms"


def test_evaluations_do_not_share_bindings(backend: str) -> None:
    expr = Expression.compile("($x := a; $x)", backend=backend)
    assert expr.evaluate({"a": 1}) == 1
    assert expr.evaluate({"b": 2}) is None


def test_each_dry_run_request_is_its_own_and_shows_the_masked_credential() -> None:
    """The masked method, URL and headers are built once per action; every outcome still gets its own copy."""
    p = pipeline()
    events = [
        {
            "type": "track",
            "event": "Demo Requested",
            "userId": f"u{i}",
            "messageId": f"m{i}",
            "traits": {"email": f"p{i}@acme.test"},
            "context": {"consent": {"canonical": {"marketing": True}}},
        }
        for i in range(3)
    ]
    first = p.dry_run(events[0], 0)
    assert first.request is not None
    first.request["headers"]["Authorization"] = "changed by a caller"
    second, third = p.dry_run(events[1], 1), p.dry_run(events[2], 2)
    for index, result in ((1, second), (2, third)):
        prepared = p.prepare(events[index], index)
        assert result.request == prepared.masked_request(p.preset.auth)
        assert result.request["headers"]["Authorization"] == "Bearer ***"
        assert result.request["body"]["data"]["attributes"]["emails"] == [f"p{index}@acme.test"]
    assert second.request["headers"] is not third.request["headers"]
