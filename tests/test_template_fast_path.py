"""The fast path for plain templates gives exactly what both JSONata engines give, and gives up otherwise.

Each template is evaluated three ways on each input: by jsonatapy, by the
reference jsonata-python, and by its plan in front of each engine; the
results must be the same JSON text (key order included), or all must fail.
The expected values of the plain cases follow the JSONata documentation: a
key whose value is undefined is left out of an object constructor, an
undefined item is left out of an array constructor, and ``$join`` joins
strings with the separator (none by default).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.compile.compiler import load_preset
from engine.language import expressions, template_fast_path
from engine.language.expressions import Expression, ExpressionError
from engine.language.template_fast_path import plan_of

TEMPLATES = [
    '{"data": {"type": "prospect", "attributes": {"emails": [traits.email], "name": traits.name}}}',
    '{"name": traits.name ? traits.name : $join([traits.first, traits.last], " ")}',
    '{"a": [traits.first, "lit", null, true, false, [traits.last]], "b": values.tag}',
    '{"joined": $join([traits.first, traits.last])}',
    '{"maybe": traits.flag ? "yes"}',
    '[traits.first, {"deep": {"deeper": traits.x.y.z}}]',
    '{"flat": [traits.flag ? [traits.first, traits.last] : "none", [traits.first]]}',  # flattened, then kept
    '{"lit": "x", "arr": ["y", null, true, false]}',  # literals only: any input, even not an object
    '{"t": traits}',  # an object value: the engines decide, except where traits is null or missing
]

INPUTS: list[Any] = [
    {"traits": {"email": "a@b.co", "name": "Ann", "first": "Ann", "last": "Lee", "flag": True}, "values": {"tag": "t"}},
    {"traits": {"first": "Ann"}, "values": {}},
    {"traits": {}, "values": {"tag": None}},
    {"traits": {"name": "", "first": "Zoë", "last": "Ångström", "flag": ""}},
    {"traits": {"name": None, "first": None, "last": "Lee", "flag": False}},
    {"traits": {"x": {"y": {"z": "deep"}}}},
    {"traits": {"x": {"y": None}}},
    {"traits": {"x": "not an object"}},
    # Outside the plan: the engines decide (arrays, numbers, objects, what $join refuses).
    {"traits": {"email": ["a@b.co", "c@d.co"], "name": 7, "first": 1.5, "last": ["x"], "flag": [1]}},
    {"traits": {"first": {"a": 1}, "last": "Lee", "flag": {"k": 1}, "x": [{"y": {"z": "in an array"}}]}},
    {"traits": [{"email": "a@b.co"}]},
    {"traits": None},
    {},
    None,
    [1, 2],
    "text",
]


def outcome(expression: Expression, data: Any) -> tuple[str, str]:
    try:
        return ("ok", json.dumps(expression.evaluate(data), ensure_ascii=True))
    except ExpressionError:
        return ("error", "")


@pytest.mark.parametrize("source", TEMPLATES)
def test_the_plan_gives_what_both_engines_give(source: str) -> None:
    plan = plan_of(source)
    assert plan is not None, source
    runner = template_fast_path.runner(plan)
    answered = 0
    for data in INPUTS:
        engines = [outcome(Expression.compile(source, backend=b), data) for b in expressions.BACKENDS]
        assert engines[0] == engines[1], (source, data)
        for backend in expressions.BACKENDS:
            assert outcome(Expression.compile(source, backend=backend, plan=plan), data) == engines[0], (source, data)
        answered += runner(data) is not template_fast_path.GIVE_UP
    # The fast path answered the plain inputs itself (an object value is never plain).
    assert answered >= (2 if source == '{"t": traits}' else 5), (source, answered)


@pytest.mark.parametrize(
    "source, data, expected",
    [
        ('{"a": x, "b": y}', {"x": "1"}, {"a": "1"}),  # an undefined value leaves its key out
        ('{"a": [x, y, "z"]}', {"y": "2"}, {"a": ["2", "z"]}),  # an undefined item is left out
        ('{"a": x}', {"x": None}, {"a": None}),  # null is a value
        ('{"n": $join([x, y], " ")}', {"x": "Ann", "y": "Lee"}, {"n": "Ann Lee"}),
        ('{"n": $join([x, y], " ")}', {"y": "Lee"}, {"n": "Lee"}),
        ('{"n": $join([x, y])}', {"x": "a", "y": "b"}, {"n": "ab"}),
        ('{"n": x ? x : "none"}', {"x": ""}, {"n": "none"}),  # an empty string is false
        ('{"n": x ? "yes"}', {"x": False}, {}),  # no else: undefined
    ],
)
def test_plain_templates_follow_the_jsonata_documentation(source: str, data: Any, expected: Any) -> None:
    plan = plan_of(source)
    assert plan is not None
    assert template_fast_path.runner(plan)(data) == expected
    for backend in expressions.BACKENDS:
        assert Expression.compile(source, backend=backend).evaluate(data) == expected


@pytest.mark.parametrize(
    "source",
    [
        '{"a": 1}',  # a number literal: the engines write numbers their own way
        '{"a": $x}',  # a variable
        '{"a": b[0]}',  # a predicate
        '{"a": b.c[]}',  # keep-array
        '{"a": $.b}',  # the context variable
        '{"a": b & c}',  # an operator
        '{"a": $string(b)}',  # any function but $join
        '{k: "v"}',  # a computed key
        '{"a": x, "a": y}',  # a repeated key (an error in JSONata)
        '($join := function($a){"x"}; {"a": $join([b])})',  # a block, rebinding $join
        "traits.email",  # a bare path: nothing to gain
        '{"a": ',  # not JSONata
    ],
)
def test_anything_else_is_not_planned(source: str) -> None:
    assert plan_of(source) is None


def test_the_shipped_lead_mapping_is_planned_and_kept_in_the_preset_cache(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNAL_ENGINE_CACHE_DIR", str(tmp_path))
    for _ in range(2):  # compiled from the YAML, then from the cache
        mapping = load_preset("outreach/lead-capture").actions["create_prospect"].mapping
        assert mapping._fast is not None


@pytest.mark.parametrize(
    "source, limits",
    [
        ('{"a": {"b": {"c": {"d": [x]}}}}', {"max_depth": 6}),  # jsonatapy evaluates it; the reference stops
        ('{"a": ["x", "y", "z"]}', {"max_sequence_length": 2}),  # the reference stops; jsonatapy does not
    ],
)
def test_limits_the_engines_could_hit_leave_the_template_to_them(source: str, limits: dict[str, int]) -> None:
    from engine.language.expressions import DEFAULT_LIMITS, ExpressionLimits

    bounds = ExpressionLimits(**{**DEFAULT_LIMITS.__dict__, **limits})
    plan = plan_of(source)
    assert plan is not None
    for backend in expressions.BACKENDS:
        planned = Expression.compile(source, bounds, backend, plan=plan)
        assert planned._fast is None
        assert outcome(planned, {"x": "v"}) == outcome(Expression.compile(source, bounds, backend), {"x": "v"})
    assert Expression.compile(source, DEFAULT_LIMITS, expressions.FAST, plan=plan)._fast is not None
