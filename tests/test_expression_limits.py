"""limits.expression: every evaluation is bounded; a limit that trips fails that event, and the run goes on."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from engine import outcome as oc
from engine.cli.main import main
from engine.compile.compiler import PresetError, load_preset
from engine.language import expressions
from engine.language.expressions import DEFAULT_LIMITS, Expression, ExpressionLimitError, ExpressionLimits
from engine.language.settings import resolve
from engine.pipeline.prepare import Pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILTIN = REPO_ROOT / "presets" / "outreach" / "lead-capture.yaml"
CONSENTED = {"consent": {"canonical": {"marketing": True}}}


@pytest.fixture(params=expressions.BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(expressions.BACKEND_ENV, request.param)
    return request.param


def preset_file(tmp_path: Path, limits: str | None, *edits: tuple[str, str]) -> Path:
    text = BUILTIN.read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    if limits is not None:
        text += "\nlimits:\n" + limits
    path = tmp_path / "preset.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def lead(title: str = "CTO", first: str = "Jane", message_id: str = "m1") -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Signed Up",
        "userId": "u1",
        "messageId": message_id,
        "context": CONSENTED,
        "traits": {"email": "jane@acme.com", "firstName": first, "title": title},
    }


def pipeline(path: Path) -> Pipeline:
    preset = load_preset(str(path))
    return Pipeline(preset, resolve(preset.settings, {}, require=False))


# --------------------------------------------------------------------------
# the declaration
# --------------------------------------------------------------------------


def test_defaults_apply_without_a_limits_section() -> None:
    preset = load_preset("outreach/lead-capture")
    assert preset.expression_limits == DEFAULT_LIMITS == ExpressionLimits(1000, 400, 100_000, 1_000_000)
    assert preset.actions["create_prospect"].mapping.limits == DEFAULT_LIMITS


def test_declared_limits_reach_every_expression(tmp_path: Path) -> None:
    path = preset_file(tmp_path, "  expression:\n    timeout_ms: 250\n    max_string_length: 5000\n")
    preset = load_preset(str(path))
    want = ExpressionLimits(timeout_ms=250, max_depth=400, max_sequence_length=100_000, max_string_length=5000)
    assert preset.expression_limits == want
    action = preset.actions["create_prospect"]
    assert action.upsert is not None
    assert action.upsert.lookup is not None
    for expression in (action.mapping, action.upsert.lookup.query, action.upsert.found, action.upsert.update_body):
        assert expression is not None and expression.limits == want
    for rule in preset.delivery.rules:  # response predicates too
        assert rule.match is None or rule.match.limits == want


@pytest.mark.parametrize(
    "limits, message",
    [
        ("  expression:\n    timeout_ms: 0\n", "limits.expression.timeout_ms: 0 is less than the minimum of 1"),
        ("  expression:\n    max_depth: deep\n", "limits.expression.max_depth: 'deep' is not of type 'integer'"),
        ("  expression:\n    max_memory: 5\n", "limits.expression.max_memory: unknown key 'max_memory'"),
        ("  rows: 5\n", "limits.rows: unknown key 'rows'"),
    ],
)
def test_bad_limits_are_located(tmp_path: Path, limits: str, message: str) -> None:
    path = preset_file(tmp_path, limits)
    with pytest.raises(PresetError) as info:
        load_preset(str(path))
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}:")
    assert message in info.value.problems[0]


# --------------------------------------------------------------------------
# a limit that trips fails that event only
# --------------------------------------------------------------------------

TRIPS = {
    "max_string_length": (
        "  expression:\n    max_string_length: 1000\n",
        '"firstName": traits.firstName,',
        '"firstName": traits.title = "trip" ? $pad("x", 5000) : traits.firstName,',
    ),
    "timeout_ms": (
        "  expression:\n    timeout_ms: 100\n",
        '"firstName": traits.firstName,',
        '"firstName": traits.title = "trip" ? ($f := function($x){ $f($x) }; $f(1)) : traits.firstName,',
    ),
    "max_depth": (
        "  expression:\n    max_depth: 60\n",
        '"firstName": traits.firstName,',
        '"firstName": traits.title = "trip" ? ($f := function($x){ 1 + $f($x) }; $f(1)) : traits.firstName,',
    ),
    "max_sequence_length": (
        "  expression:\n    max_sequence_length: 1000\n",
        '"tags": ["Signal", values.tag]',
        '"tags": traits.title = "trip" ? [1..5000] : ["Signal", values.tag]',
    ),
}


@pytest.mark.parametrize("limit", list(TRIPS))
def test_a_limit_that_trips_fails_the_event_with_cause_expression_limit(
    tmp_path: Path, backend: str, limit: str
) -> None:
    limits, old, new = TRIPS[limit]
    p = pipeline(preset_file(tmp_path, limits, (old, new)))
    before = p.dry_run(lead("CTO", message_id="m0"), 0)
    tripped = p.dry_run(lead("trip", message_id="m1"), 1)
    after = p.dry_run(lead("VP", message_id="m2"), 2)
    assert (before.outcome, after.outcome) == (oc.WOULD_SEND, oc.WOULD_SEND)
    assert tripped.outcome == oc.FAILED
    assert tripped.cause == "expression_limit"
    assert tripped.detail is not None
    assert tripped.detail.startswith(f"actions.create_prospect.mapping: stopped at limits.expression.{limit}: ")


def test_the_cli_reports_a_tripped_limit_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    limits, old, new = TRIPS["max_string_length"]
    path = preset_file(tmp_path, limits, (old, new))
    events = tmp_path / "events.ndjson"
    events.write_text(
        "".join(json.dumps(e) + "\n" for e in (lead("trip", message_id="m1"), lead(message_id="m2"))), encoding="utf-8"
    )
    code = main(["run", str(path), "--events", str(events), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 1  # an event failed (the exit-status table)
    assert "1 would_send, 1 failed (1 expression_limit)" in err
    first, second = (json.loads(line) for line in out.splitlines())
    assert (first["outcome"], first["cause"]) == ("failed", "expression_limit")
    assert "$pad would build a string of 5000 characters (limit 1000)" in first["detail"]
    assert second["outcome"] == "would_send"
    assert len(out) < 5000  # nothing of the over-long string was printed


# --------------------------------------------------------------------------
# the string-size guard acts before the string exists
# --------------------------------------------------------------------------


def test_pad_is_stopped_before_it_builds_a_gigabyte(backend: str) -> None:
    expr = Expression.compile('{"x": $pad("x", 1e9)}')
    started = time.monotonic()
    with pytest.raises(ExpressionLimitError) as info:
        expr.evaluate({})
    assert info.value.limit == "max_string_length"
    assert "$pad would build a string of 1000000000 characters (limit 1000000)" in str(info.value)
    assert time.monotonic() - started < 5  # building the string takes over 20 s


def test_pad_reached_through_eval_is_guarded_too(backend: str) -> None:
    expr = Expression.compile("$eval(\"$pad('x', 2e6)\")")
    with pytest.raises(ExpressionLimitError) as info:
        expr.evaluate({})
    assert info.value.limit == "max_string_length"
    assert "$pad would build a string of 2000000 characters" in str(info.value)


@pytest.mark.parametrize(
    "source, data, expected",
    [
        ("$pad(x, 5)", {"x": "ab"}, "ab   "),
        ('$pad(x, -5, "#")', {"x": "ab"}, "###ab"),
        ('{"p": $pad(missing, 3)}', {}, {}),
        ("x.$pad(4)", {"x": "ab"}, "ab  "),
        ('$map(["a", "b"], $pad(?, 2))', {}, ["a ", "b "]),
    ],
)
def test_the_guarded_pad_behaves_as_pad(backend: str, source: str, data: Any, expected: Any) -> None:
    assert Expression.compile(source).evaluate(data) == expected


def test_strings_built_another_way_are_caught_in_the_result(backend: str) -> None:
    expr = Expression.compile(
        '$join($map([1..300], function($i){ "0123456789" }))', ExpressionLimits(max_string_length=2000)
    )
    with pytest.raises(ExpressionLimitError) as info:
        expr.evaluate({})
    assert info.value.limit == "max_string_length"
    assert "3000 characters (limit 2000)" in str(info.value)
    assert (
        Expression.compile(
            '$join($map([1..100], function($i){ "0123456789" }))', ExpressionLimits(max_string_length=2000)
        ).evaluate({})
        == "0123456789" * 100
    )


# --------------------------------------------------------------------------
# regular expressions are bounded by the time limit too
# --------------------------------------------------------------------------

CATASTROPHIC = "$contains(s, /^(a|a)*$/)"  # backtracks 2^n times in Python's re


def test_a_backtracking_regex_is_stopped_by_the_time_limit(backend: str) -> None:
    expr = Expression.compile(CATASTROPHIC, ExpressionLimits(timeout_ms=200))
    started = time.monotonic()
    try:
        result = expr.evaluate({"s": "a" * 40 + "b"})
    except ExpressionLimitError as exc:
        assert backend == expressions.REFERENCE  # jsonatapy's regexes run in linear time
        assert exc.limit == "timeout_ms"  # noqa: PT017 - which backend raises is the point of the test
    else:
        assert backend == expressions.FAST and result is False
    assert time.monotonic() - started < 5


def test_an_event_the_reference_engine_evaluates_is_bounded_too(tmp_path: Path) -> None:
    """A lone surrogate sends the event to the reference engine; its regexes still stop in time."""
    path = preset_file(
        tmp_path,
        "  expression:\n    timeout_ms: 200\n",
        ('"title": traits.title,', '"title": $contains(traits.title, /^(a|a)*$/) ? "x" : traits.title,'),
    )
    p = pipeline(path)
    started = time.monotonic()
    result = p.dry_run(lead(title="a" * 40 + "\ud800"), 0)
    assert time.monotonic() - started < 5
    assert (result.outcome, result.cause) == (oc.FAILED, "expression_limit")
    assert "limits.expression.timeout_ms" in (result.detail or "")
    assert p.dry_run(lead(title="CTO"), 1).outcome == oc.WOULD_SEND


# --------------------------------------------------------------------------
# inputs the fast engine cannot take
# --------------------------------------------------------------------------


def test_a_lone_surrogate_gives_the_reference_engines_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    event = lead(first="Bo\ud800b")
    results = {}
    for name in expressions.BACKENDS:
        monkeypatch.setenv(expressions.BACKEND_ENV, name)
        results[name] = pipeline(BUILTIN).dry_run(event, 0).to_dict()
    assert results[expressions.FAST] == results[expressions.REFERENCE]
    assert results[expressions.FAST]["outcome"] == "would_send"
    assert results[expressions.FAST]["request"]["body"]["data"]["attributes"]["firstName"] == "Bo\ud800b"


@pytest.mark.parametrize("data", [{"n": 10**30}, {"n": -(2**64)}, {"n": 5, "s": "\udc80"}])
def test_values_jsonatapy_cannot_read_are_evaluated_by_the_reference(data: dict[str, Any]) -> None:
    source = '{"n": n, "s": s}'
    fast = Expression.compile(source, backend=expressions.FAST).evaluate(data)
    reference = Expression.compile(source, backend=expressions.REFERENCE).evaluate(data)
    assert fast == reference == dict(data.items())


# --------------------------------------------------------------------------
# upsert expressions, evaluated by the sender
# --------------------------------------------------------------------------


def test_a_limit_tripped_in_an_upsert_expression_fails_the_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.runtime import Engine
    from engine.state.dead_letters import MemoryDeadLetters
    from engine.state.token_store import MemoryTokenStore
    from test_delivery_unit import (
        ACCESS,
        DUPLICATE_422,
        SETTINGS,
        Wire,
        _CompatResponse,
        aioresponses,
        aioresponses_core,
        run,
    )

    path = preset_file(
        tmp_path,
        "  expression:\n    max_string_length: 100\n",
        (
            '{"filter[emails]": document.data.attributes.emails[0], "page[size]": "1"}',
            '{"filter[emails]": $pad(document.data.attributes.emails[0], 500), "page[size]": "1"}',
        ),
    )
    monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatResponse)
    with aioresponses() as m:
        wire = Wire(m)
        wire.token(ACCESS)
        wire.create(422, payload=DUPLICATE_422)
        engine = Engine.from_preset(
            str(path), SETTINGS, token_store=MemoryTokenStore(), dead_letters=MemoryDeadLetters()
        )

        async def deliver() -> oc.Outcome:
            async with engine:
                return await engine.process(lead())

        result = run(deliver())
    assert result.outcome == oc.FAILED
    assert result.cause == "expression_limit"
    assert "upsert.lookup" in (result.detail or "")
    assert "$pad would build a string of 500 characters (limit 100)" in (result.detail or "")
    assert wire.kinds() == ["token", "create"]  # no lookup was sent
