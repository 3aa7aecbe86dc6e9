"""Records (the preset model, settings, templates, contracts) behave as ``@dataclass(frozen=True)`` classes do.

Each promise is checked against a real frozen dataclass with the same fields, so the expected
behaviour is the standard library's, not this module's own output.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Mapping
from typing import Any

import pytest

from engine.language.model import EventRoute, RetrySpec, RuleSpec
from engine.language.records import record


@dataclasses.dataclass(frozen=True)
class ReferenceRoute:
    name: str
    action: str
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ReferenceRule:
    then: str
    message: str | None
    statuses: tuple[int | str, ...] = ()
    errors: tuple[str, ...] = ()
    detail_contains: str | None = None
    match: Any = None
    steps: tuple[str, ...] = ()


def test_is_a_dataclass_with_the_same_fields() -> None:
    assert dataclasses.is_dataclass(RuleSpec)
    assert [f.name for f in dataclasses.fields(RuleSpec)] == [f.name for f in dataclasses.fields(ReferenceRule)]
    assert RuleSpec.__match_args__ == ReferenceRule.__match_args__


def test_construction_positional_keyword_and_defaults() -> None:
    mine = RuleSpec("retry", None, (429,), steps=("create",))
    theirs = ReferenceRule("retry", None, (429,), steps=("create",))
    assert repr(mine).removeprefix("RuleSpec") == repr(theirs).removeprefix("ReferenceRule")
    assert mine.errors == () and mine.detail_contains is None


def test_default_factory_gives_each_instance_its_own_value() -> None:
    first, second = EventRoute("lead", "create"), EventRoute("lead", "create")
    assert first.values == {} and first.values is not second.values
    assert ReferenceRoute("lead", "create").values == first.values


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("retry",), {}),  # missing a required field
        (("retry", None, (), (), None, None, (), "extra"), {}),  # too many
        (("retry", None), {"nope": 1}),  # unknown keyword
        (("retry", None), {"then": "drop"}),  # given twice
    ],
)
def test_wrong_arguments_raise_type_error_as_a_dataclass_does(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        ReferenceRule(*args, **kwargs)
    with pytest.raises(TypeError):
        RuleSpec(*args, **kwargs)


def test_equality_and_hash_are_field_wise() -> None:
    one, same, other = RuleSpec("retry", None, (429,)), RuleSpec("retry", None, (429,)), RuleSpec("drop", None)
    assert one == same and hash(one) == hash(same) and one != other
    assert {one, same, other} == {one, other}
    assert one != ReferenceRule("retry", None, (429,))  # another class is never equal, as for dataclasses
    assert RetrySpec(3, 1.0, 2.0, 30.0, "full") == RetrySpec(3, 1.0, 2.0, 30.0, "full")


def test_instances_are_read_only() -> None:
    rule = RuleSpec("retry", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.then = "drop"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del rule.then  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.anything = 1  # type: ignore[attr-defined]


def test_replace_copy_and_pickle_keep_working() -> None:
    rule = RuleSpec("retry", None, (429,))
    changed = dataclasses.replace(rule, then="drop")
    assert changed == RuleSpec("drop", None, (429,)) and rule.then == "retry"
    assert copy.deepcopy(rule) == rule
    assert pickle.loads(pickle.dumps(rule)) == rule
    assert dataclasses.asdict(rule) == dataclasses.asdict(ReferenceRule("retry", None, (429,)))


def test_a_class_with_its_own_methods_is_refused() -> None:
    class Shown:
        name: str

        def __repr__(self) -> str:
            return "mine"

    with pytest.raises(TypeError, match="__repr__"):
        record(Shown)


def test_an_undocumented_record_is_named_by_its_fields_without_inspect(monkeypatch: pytest.MonkeyPatch) -> None:
    """dataclass would document it with inspect.signature, which tokenizes object.__init__'s text
    signature (compiling tokenize's patterns: milliseconds of every start)."""
    import inspect

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("inspect.signature was called")

    monkeypatch.setattr(inspect, "signature", refuse)

    @record
    class Point:
        x: int
        y: int = 0

    assert Point.__doc__ == "Point(x, y)"
    assert Point(1) == Point(1, 0)
