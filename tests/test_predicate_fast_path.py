"""The fast path for response-rule predicates gives exactly what both JSONata engines give, and gives up otherwise.

Every ``match`` predicate of every shipped preset, and hand-written ones of
each planned shape, is evaluated on a corpus of answers: the golden cases'
scripted answers, and odd ones built from the predicate's own paths and
literals (no body, a body that is a list or text, nulls, empty strings,
arrays along the path, numbers where strings are compared, booleans where
numbers are). For each, its plan must give what each engine gives alone (it
may give up, and then the engine answers), and where the plan answers by
itself both engines must give that answer.

The expected values of the plain cases follow the JSONata documentation:
``$exists`` is true when its argument evaluates to a value (null included),
``$type`` names the value's type and is undefined for undefined, and ``=`` /
``!=`` are false when either side is undefined.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.compile.compiler import fast_path_plan, load_preset
from engine.delivery.response_rules import Answer, first_match, matches
from engine.language import expressions, predicate_fast_path
from engine.language.expressions import DEFAULT_LIMITS, Expression, ExpressionError, ExpressionLimits
from engine.language.model import RuleSpec
from engine.language.predicate_fast_path import GIVE_UP, plan_of
from engine.language.yaml_source import load_yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def shipped_predicates() -> list[tuple[str, str]]:
    """(preset file, source) of every ``when.match`` in presets/**, wherever a rule list sits."""
    found: list[tuple[str, str]] = []

    def walk(node: Any, file: str) -> None:
        if isinstance(node, dict):
            when = node.get("when")
            if isinstance(when, dict) and isinstance(when.get("match"), str):
                found.append((file, when["match"]))
            for value in node.values():
                walk(value, file)
        elif isinstance(node, list):
            for value in node:
                walk(value, file)

    for path in sorted((REPO_ROOT / "presets").rglob("*.yaml")):
        walk(load_yaml(path).data(), str(path.relative_to(REPO_ROOT)))
    return found


SHIPPED = shipped_predicates()

# Each planned shape, beyond what the presets ship today.
WRITTEN = [
    "status = 200",
    "200 = status",
    "status != 204",
    "headers.`x-ratelimit-remaining` = '0'",
    "$exists(headers.`retry-after`)",
    "$exists(body)",
    "$exists(body.data.attributes.email)",
    "$type(body) = 'object'",
    "'string' = $type(body)",
    "$type(body.data) != 'array'",
    "$type(body.data.id) = 'number'",
    "$type(body.data.id) = 'null'",
    "$type(body.ok) = 'boolean'",
    "body.data.id = null",
    "body.data.id != null",
    "body.ok = true",
    "body.ok != false",
    "body.data.id = 1",
    "body.data.id = 1.5",
    "body.data.id = -1",
    "body.data.id = '1'",
    "body.data.id = ''",
    "body.data.id in ['1', 1, null]",
    "body.ok in [true, 'yes']",
    "body.ok in [0, 1]",
    "body.ok in []",
    "status = 409 and body.errors.id = 'conflict' or $exists(body.data.id)",
    "($exists(body.id) or $exists(body.data.id)) and $type(body.errors) != 'array'",
]

PREDICATES = sorted({source for _, source in SHIPPED} | set(WRITTEN))

ODD_VALUES: list[Any] = [
    None,
    "",
    "text",
    "1",
    "null",
    "true",
    0,
    1,
    1.0,
    1.5,
    -1,
    2**53 + 1,  # beyond a double's integers
    True,
    False,
    [],
    [None],
    [1],
    [[]],
    [{"id": "x"}],
    {},
    {"id": None},
    {"id": {}},
]


def literals(plan: Any) -> Iterator[Any]:
    """Every literal in a predicate plan, so equality can come out true."""
    stack = [plan[1]]
    while stack:
        test = stack.pop()
        if test[0] in ("and", "or"):
            stack.extend(test[1:])
        elif test[0] in ("=", "!="):
            yield test[2]
        elif test[0] == "in":
            yield from test[2]


def paths(plan: Any) -> Iterator[tuple[str, ...]]:
    stack = [plan[1]]
    while stack:
        test = stack.pop()
        if test[0] in ("and", "or"):
            stack.extend(test[1:])
        elif test[0] == "exists":
            yield test[1]
        else:
            yield test[1][1]


def nested(names: tuple[str, ...], leaf: Any) -> Any:
    for name in reversed(names):
        leaf = {name: leaf}
    return leaf


def answer_data(status: int, headers: dict[str, str] | None, body: Any) -> dict[str, Any]:
    return dict(Answer.from_body(status, body, headers).data)


def golden_answers() -> list[dict[str, Any]]:
    """Every answer the golden delivery cases script, as a rule's predicate sees it."""
    found = []
    for path in sorted((REPO_ROOT / "golden").rglob("*.json")):
        if path.name.endswith(".expected.json"):
            continue
        for reply in json.loads(path.read_text(encoding="utf-8")).get("responses") or []:
            if "status" in reply:
                found.append(answer_data(reply["status"], reply.get("headers"), reply.get("body")))
    return found


GOLDEN_ANSWERS = golden_answers()
GENERIC_BODIES: list[Any] = [
    None,  # no body
    "<html>Bad Gateway</html>",  # not JSON: the text
    "",
    [1, 2],  # a list
    [{"data": {"id": "1"}}],
    {"data": None},
    {"data": {"id": None}},
    {"data": {"id": ""}},
    {"data": [{"id": "1"}, {"id": "2"}]},
    {"data": [], "errors": []},
    {"errors": [{"id": "conflict"}]},
    {"errors": {"id": "conflict"}},
    {"id": 0, "success": False, "ok": "true"},
    {"id": "1", "errors": {}},
    # What the standard library's JSON reader lets through, beside a plain path: jsonatapy cannot take some.
    {"data": {"id": "1"}, "id": float("nan"), "x": 2**70, "y": "\ud800"},
    {"data": {"id": float("inf")}, "id": -(2**70), "category": "\ud800"},
]


def corpus(plan: Any) -> list[Any]:
    """The answers a predicate is checked on: golden ones, generic ones, and odd values along its own paths."""
    data: list[Any] = list(GOLDEN_ANSWERS)
    headers = {"Content-Type": "application/json", "Retry-After": "5", "X-RateLimit-Remaining": "0"}
    for status, body in itertools.product((200, 201, 409), GENERIC_BODIES):
        data.append(answer_data(status, headers, body))
    values = ODD_VALUES + list(literals(plan))
    values += [str(v) for v in literals(plan) if not isinstance(v, str)]
    values += [[v] for v in literals(plan)]
    for names in paths(plan):
        for cut in range(1, len(names) + 1):  # the odd value at each step of the path
            for value in values:
                document = {"status": 200, "headers": {}, "body": None}
                document.update(nested(names[:cut], value))
                data.append(document)
    data += [None, "text", [{"status": 200, "body": {}}]]  # not an answer at all: the engines map over a list
    return data


def outcome(expression: Expression, data: Any) -> tuple[str, str]:
    try:
        return ("ok", json.dumps(expression.evaluate(data)))
    except ExpressionError:
        return ("error", "")


def test_every_shipped_predicate_is_found() -> None:
    files = {file for file, _ in SHIPPED}
    assert {"presets/outreach/lead-capture.yaml", "presets/meta/conversions.yaml"} <= files
    assert len(SHIPPED) >= 20


@pytest.mark.parametrize("source", PREDICATES)
def test_the_plan_gives_what_both_engines_give(source: str) -> None:
    plan = fast_path_plan(source)
    if plan is None:
        assert source in {s for _, s in SHIPPED}, f"a written predicate is not planned: {source}"
        return
    assert plan[0] == predicate_fast_path.ROOT, source
    runner = predicate_fast_path.runner(plan)
    engines = [Expression.compile(source, backend=b) for b in expressions.BACKENDS]
    planned = [Expression.compile(source, backend=b, plan=plan) for b in expressions.BACKENDS]
    answered = 0
    for data in corpus(plan):
        alone = [outcome(e, data) for e in engines]
        for expression, expected in zip(planned, alone, strict=True):
            assert outcome(expression, data) == expected, (source, expression.backend, data)
        fast = runner(data)
        if fast is not GIVE_UP:
            assert alone[0] == alone[1] == ("ok", json.dumps(fast)), (source, data, fast, alone)
            answered += 1
    assert answered >= 20, (source, answered)  # the plan answered the plain answers itself


def test_the_common_shipped_shapes_are_planned() -> None:
    planned = {source for _, source in SHIPPED if plan_of(source) is not None}
    for source in (
        "$exists(body.data.id)",
        "$type(body.data) = 'array'",
        "body.category = 'CONFLICT'",
        "body.success = true and $exists(body.id)",
        "body.error.code in [102, 104, 190]",
        "body.error.is_transient = true or body.error.code in [1, 2]",
    ):
        assert source in planned, source


@pytest.mark.parametrize(
    "source, data, expected",
    [
        ("$exists(body.id)", {"body": {"id": None}}, True),  # null is a value
        ("$exists(body.id)", {"body": {}}, False),
        ("$exists(body.id)", {"body": "text"}, False),  # a field of a string: undefined
        ("$exists(body.data)", {"body": {"data": []}}, True),  # the last step keeps an empty array
        ("$type(body.data) = 'array'", {"body": {"data": []}}, True),
        ("$type(body.data) = 'null'", {"body": {"data": None}}, True),
        ("$type(body.data) != 'array'", {"body": {}}, False),  # undefined on one side: false
        ("body.id != 'x'", {"body": {}}, False),
        ("body.id != 'x'", {"body": {"id": None}}, True),
        ("body.id = 1", {"body": {"id": 1.0}}, True),  # numbers are numbers
        ("body.id = 1", {"body": {"id": "1"}}, False),
        ("body.id = 1", {"body": {"id": True}}, False),
        ("body.ok = true", {"body": {"ok": 1}}, False),
        ("body.code in [4, 17]", {"body": {"code": 17}}, True),
        ("body.code in [4, 17]", {"body": {"code": "17"}}, False),
    ],
)
def test_plain_predicates_follow_the_jsonata_documentation(source: str, data: Any, expected: bool) -> None:
    plan = plan_of(source)
    assert plan is not None
    assert predicate_fast_path.runner(plan)(data) is expected
    for backend in expressions.BACKENDS:
        assert Expression.compile(source, backend=backend).evaluate(data) is expected


@pytest.mark.parametrize(
    "source, data",
    [
        ("$exists(body.data.id)", {"body": {"data": [{"id": "1"}]}}),  # an array along the path: mapped over
        ("body.id = 1", {"body": {"id": [1]}}),  # an array compared: deep equality
        ("body.id = 'x'", {"body": {"id": {"a": 1}}}),
        ("body.id = 1", {"body": {"id": 2**53 + 1}}),  # compared as a double by the engines
        ("body.code in [1, 2]", {"body": {"code": True}}),  # the engines disagree
        ("body.ok in [true]", {"body": {"ok": 1}}),
        ("$exists(body.id)", [{"body": {"id": 1}}]),  # the input itself a list
    ],
)
def test_what_the_plan_cannot_answer_exactly_is_left_to_the_engines(source: str, data: Any) -> None:
    plan = plan_of(source)
    assert plan is not None
    assert predicate_fast_path.runner(plan)(data) is GIVE_UP


@pytest.mark.parametrize(
    "source",
    [
        "body[0].errorCode = 'DUPLICATES_DETECTED'",  # a filter
        "$exists(body.data[0])",
        "$exists(body.*)",  # a wildcard
        "$exists(body.**.id)",  # descendants
        "$exists($.body)",  # the context variable
        "$exists($x.body)",  # a variable
        "$exists(body.data.$string())",  # a function step
        "$exists(body, 1)",  # another signature
        "$exists(body) = true",  # $exists compared
        "body.a = body.b",  # two paths
        "body.a > 1",  # an order comparison
        "body.a = 1e300",  # a number beyond the integers a double holds exactly
        "'x' in body.errors",  # the path on the right
        "body.a in [body.b]",
        "body.a in 'x'",  # not an array constructor
        "$contains(body.message, 'x')",
        "$not($exists(body))",
        "$type(body) = $type(status)",
        "($exists := function($x){true}; $exists(body))",  # a block
        "body.a = 1 ? true : false",
        "body",  # a bare path
        "true",
        "$exists(",  # not JSONata
    ],
)
def test_anything_else_is_not_planned(source: str) -> None:
    assert plan_of(source) is None
    assert fast_path_plan(source) is None or fast_path_plan(source)[0] != predicate_fast_path.ROOT


def test_limits_the_engines_could_hit_leave_the_predicate_to_them() -> None:
    source = "$exists(body.a.b.c.d.e.f)"
    plan = plan_of(source)
    assert plan is not None
    tight = ExpressionLimits(**{**DEFAULT_LIMITS.__dict__, "max_depth": 20})
    assert Expression.compile(source, tight, expressions.FAST, plan=plan)._fast is None
    short = ExpressionLimits(**{**DEFAULT_LIMITS.__dict__, "max_sequence_length": 2})
    assert (
        Expression.compile("body.a in [1, 2, 3]", short, expressions.FAST, plan=plan_of("body.a in [1, 2, 3]"))._fast
        is None
    )
    assert Expression.compile(source, DEFAULT_LIMITS, expressions.FAST, plan=plan)._fast is not None


def test_the_shipped_predicates_are_planned_and_kept_in_the_preset_cache(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNAL_ENGINE_CACHE_DIR", str(tmp_path))
    for _ in range(2):  # compiled from the YAML, then from the cache
        rules = load_preset("outreach/lead-capture").delivery.rules
        predicates = [rule.match for rule in rules if rule.match is not None]
        assert predicates and all(p._fast is not None and p.reads == frozenset({"body"}) for p in predicates)


# -- Answer: what only some rules read is worked out when one asks -------------------------------


def rule(**when: Any) -> RuleSpec:
    return RuleSpec(then="deliver", message=None, **when)


class Watched(dict):  # type: ignore[type-arg]
    """A dict that notes which of its reading methods were called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    def get(self, *args: Any) -> Any:
        self.reads.append("get")
        return super().get(*args)

    def items(self) -> Any:
        self.reads.append("items")
        return super().items()


def test_an_answer_works_out_error_ids_only_for_a_rule_that_reads_them() -> None:
    body = Watched({"errors": [{"id": "validationError", "detail": "Email Is Invalid"}], "error": "invalid_grant"})
    headers = Watched({"Retry-After": "5"})
    answer = Answer.from_body(422, body, headers, step="create")
    assert first_match([rule(statuses=(201,)), rule(steps=("update",), errors=("validationError",))], answer) is None
    assert body.reads == [] and headers.reads == []  # neither rule got as far as the body
    assert matches(rule(statuses=(422,), errors=("validationError",)), answer)
    assert answer.error_ids == ("invalid_grant", "validationError")  # the OAuth shape first, as before
    assert matches(rule(detail_contains="email is invalid"), answer)
    assert not matches(rule(errors=("conflict",)), answer)
    reads = len(body.reads)
    assert answer.texts == ("Email Is Invalid",) and len(body.reads) == reads  # read once
    assert headers.reads == []


def test_a_predicate_on_the_headers_sees_them_lower_cased() -> None:
    source = "headers.`retry-after` = '5'"
    headers = Watched({"Retry-After": "5"})
    answer = Answer.from_body(429, {"data": {}}, headers)
    for plan in (plan_of(source), None):
        assert matches(rule(match=Expression.compile(source, plan=plan)), answer)
    assert answer.data == {"status": 429, "headers": {"retry-after": "5"}, "body": {"data": {}}}
    assert headers.reads == ["items"]  # lower-cased once


def test_a_predicate_on_the_body_is_given_the_answer_without_its_headers() -> None:
    source = "$type(body.data) = 'array'"
    headers = Watched({"X-Big": "v"})
    answer = Answer.from_body(200, {"data": []}, headers, step="lookup")
    planned = Expression.compile(source, plan=plan_of(source))
    assert planned.reads == frozenset({"body"})
    assert matches(rule(match=planned, steps=("lookup",)), answer)
    assert headers.reads == []
    unplanned = Expression.compile(source)
    assert unplanned.reads is None
    assert matches(rule(match=unplanned), answer)  # the engine is given the whole answer, headers included
    assert headers.reads == ["items"]
    assert answer.data_for(frozenset({"body"}))["headers"] == {"x-big": "v"}  # built once, then given to all


def test_a_transport_failure_has_no_data_and_matches_no_predicate() -> None:
    answer = Answer(None, transport_error="timeout")
    assert answer.data == {} and answer.error_ids == () and answer.texts == ()
    assert matches(rule(errors=("timeout",)), answer)
    assert not matches(rule(match=Expression.compile("$exists(status) or true")), answer)
