"""A fast path for JSONata predicates of the shapes response rules are written in.

Every answer a destination gives is matched against the preset's response
rules, and most rules' ``match`` is a small test on the body:
``$exists(body.data.id)``, ``$type(body.data) = 'array'``,
``body.category = 'CONFLICT'``, ``body.error.code in [4, 17]``, joined by
``and`` / ``or``. Asking a JSONata engine costs converting the whole answer
into the engine's values first. Such a predicate is planned once, from the
reference parser's syntax tree, into plain tuples (kept in the preset cache
beside the template plans), and run here as Python.

The plan covers only what is matched exactly. A path is a plain dotted
path of field names from the input; while walking it:

- an object gives its field (a missing one: undefined);
- a string, number, boolean or null gives undefined (JSONata looks fields up
  on objects only);
- an array gives up: JSONata maps the rest of the path over it and
  flattens the results, which is not copied here.

At the end of the path, JSONata keeps an array value as it is (the last
step's single array is not flattened), so ``$exists`` of it is true (even
when it is empty) and ``$type`` of it is ``"array"``. ``=``, ``!=`` and
``in`` compare only null, booleans, strings and numbers JSON can carry
exactly (an integer beyond 2^53 is compared as a float by both engines):
anything else gives up. With an undefined side both ``=`` and ``!=`` are
false, as in JSONata. ``in`` gives up on a boolean tested against numbers
or a number against booleans: the engines disagree there (the reference
engine compares them as Python does).

An input the plan gives up on is evaluated by the JSONata engine as before.
The results are compared with both JSONata engines' in the differential tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .template_fast_path import GIVE_UP, GiveUp, plain_node, reference_tree

# A plan is plain data (tuples, strings, numbers, booleans, None), so marshal can keep it:
#   ("?", test)                                  the root: a predicate plan (template plans never start with "?")
# a test:
#   ("and", test, test) | ("or", test, test)
#   ("exists", names)                            $exists(path)
#   ("=", operand, literal) | ("!=", operand, literal)
#   ("in", operand, (literal, ...))              path in [literal, ...]
# an operand:
#   ("p", names)                                 a path of field names from the input
#   ("t", names)                                 $type(path)
Plan = tuple[Any, ...]

ROOT = "?"
MAX_PLAN_DEPTH = 32  # far beyond any rule; keeps the planner and the runner off the recursion limit
EXACT_INTEGER = 2**53  # both engines compare numbers as doubles; beyond this an integer is not exact
_UNDEFINED: Any = object()
_COMPARISONS = ("=", "!=")


def plan_of(source: str) -> Plan | None:
    """The plan of ``source``, or None when it is not one of the planned shapes (or does not parse)."""
    tree = reference_tree(source)
    return None if tree is None else plan_of_tree(tree)


def plan_of_tree(tree: Any) -> Plan | None:
    """The plan of a syntax tree of the reference parser, or None."""
    try:
        return (ROOT, _test(tree, 0))
    except GiveUp:
        return None


def _test(node: Any, depth: int) -> Plan:
    if depth > MAX_PLAN_DEPTH:
        raise GiveUp("depth")
    kind = getattr(node, "type", None)
    if kind == "binary" and node.value in ("and", "or"):
        plain_node(node, "lhs", "rhs")
        return (node.value, _test(node.lhs, depth + 1), _test(node.rhs, depth + 1))
    if kind == "binary" and node.value in _COMPARISONS:
        plain_node(node, "lhs", "rhs")
        if _is_literal(node.rhs):
            return (node.value, _operand(node.lhs), _literal(node.rhs))
        if _is_literal(node.lhs):  # 'array' = $type(body.data): equality is symmetric
            return (node.value, _operand(node.rhs), _literal(node.lhs))
        raise GiveUp("comparison")
    if kind == "binary" and node.value == "in":
        plain_node(node, "lhs", "rhs")
        items = node.rhs
        if getattr(items, "type", None) != "unary" or items.value != "[":
            raise GiveUp("in")
        plain_node(items, "expressions", "consarray")
        return ("in", _operand(node.lhs), tuple(_literal(item) for item in items.expressions or []))
    if kind == "function":
        name, argument = _call(node)
        if name == "exists":
            return ("exists", _path(argument))
    if kind == "block":  # (a or b): one expression in parentheses, nothing bound
        plain_node(node, "expressions")
        if len(node.expressions or []) != 1:
            raise GiveUp("block")
        return _test(node.expressions[0], depth + 1)
    raise GiveUp(str(kind))


def _operand(node: Any) -> Plan:
    if getattr(node, "type", None) == "path":
        return ("p", _path(node))
    if getattr(node, "type", None) == "function":
        name, argument = _call(node)
        if name == "type":
            return ("t", _path(argument))
    raise GiveUp("operand")


def _call(node: Any) -> tuple[str, Any]:
    """(name, argument) of a call of a built-in function with one argument."""
    plain_node(node, "procedure", "arguments")
    procedure, arguments = node.procedure, node.arguments or []
    if getattr(procedure, "type", None) != "variable" or len(arguments) != 1:
        raise GiveUp("function")
    plain_node(procedure)
    return procedure.value, arguments[0]


def _path(node: Any) -> tuple[str, ...]:
    if getattr(node, "type", None) != "path":
        raise GiveUp("path")
    plain_node(node, "steps")
    names = []
    for step in node.steps or []:
        if getattr(step, "type", None) != "name" or not isinstance(step.value, str):
            raise GiveUp("step")  # $, $$, a variable, a wildcard, a function, a parenthesised step
        plain_node(step)
        names.append(step.value)
    if not names:
        raise GiveUp("path")
    return tuple(names)


def _is_literal(node: Any) -> bool:
    return getattr(node, "type", None) in ("string", "number", "value")


def _literal(node: Any) -> Any:
    if not _is_literal(node):
        raise GiveUp("literal")
    plain_node(node)
    value = node.value
    kind = type(value)
    if node.type == "string" and kind is str:
        return value
    if node.type == "value" and (value is None or kind is bool):
        return value
    if node.type == "number" and kind in (int, float) and _exact_number(value):
        return value
    raise GiveUp("literal")


def _exact_number(value: Any) -> bool:
    if type(value) is int:
        return -EXACT_INTEGER <= value <= EXACT_INTEGER
    return type(value) is float and math.isfinite(value)


def fits(plan: Plan, max_depth: int, max_sequence_length: int) -> bool:
    """Whether the engines could evaluate ``plan`` within these limits whatever the input (with headroom)."""
    depth, items = _size(plan[1])
    return 3 * depth + 10 <= max_depth and items <= max_sequence_length


def _size(test: Plan) -> tuple[int, int]:
    """(nesting depth, the longest literal array) of a test."""
    kind = test[0]
    if kind in ("and", "or"):
        parts = [_size(test[1]), _size(test[2])]
        return 1 + max(d for d, _ in parts), max(n for _, n in parts)
    if kind == "exists":
        return 2 + len(test[1]), 1
    if kind in _COMPARISONS:
        return 2 + len(test[1][1]), 1
    if kind == "in":
        return 2 + len(test[1][1]), max(1, len(test[2]))
    raise ValueError(f"not a predicate plan: {kind!r}")


def roots(plan: Plan) -> frozenset[str]:
    """The top-level fields of the input the predicate reads: nothing else in the input can change its result."""
    found: set[str] = set()
    stack = [plan[1]]
    while stack:
        test = stack.pop()
        kind = test[0]
        if kind in ("and", "or"):
            stack.extend(test[1:])
        elif kind == "exists":
            found.add(test[1][0])
        else:
            found.add(test[1][1][0])
    return frozenset(found)


def runner(plan: Plan) -> Callable[[Any], Any]:
    """A function of the input giving the predicate's result (a bool), or :data:`GIVE_UP` where it cannot be exact."""
    if plan[0] != ROOT:
        raise ValueError("not a predicate plan")
    run = _build(plan[1])

    def evaluate(data: Any) -> Any:
        try:
            return run(data)
        except GiveUp:
            return GIVE_UP

    return evaluate


def _build(test: Plan) -> Callable[[Any], bool]:
    kind = test[0]
    if kind in ("and", "or"):
        left, right = _build(test[1]), _build(test[2])
        # Neither side can fail in an engine, so stopping early gives the engines' answer.
        if kind == "and":
            return lambda data: left(data) and right(data)
        return lambda data: left(data) or right(data)
    if kind == "exists":
        walk = _walker(test[1], exists=True)
        return walk
    if kind in _COMPARISONS:
        value_of = _operand_runner(test[1])
        literal = test[2]
        if not (literal is None or type(literal) in (bool, str) or _exact_number(literal)):
            raise ValueError(f"not a literal: {literal!r}")
        equal = kind == "="

        def compare(data: Any) -> bool:
            value = value_of(data)
            if value is _UNDEFINED:
                return False  # JSONata: = and != with an undefined side are both false
            return _same(value, literal) is equal

        return compare
    if kind == "in":
        value_of = _operand_runner(test[1])
        literals = tuple(test[2])
        if not all(item is None or type(item) in (bool, str) or _exact_number(item) for item in literals):
            raise ValueError("not a list of literals")
        has_boolean = any(type(item) is bool for item in literals)
        has_number = any(type(item) in (int, float) for item in literals)

        def includes(data: Any) -> bool:
            value = value_of(data)
            if value is _UNDEFINED:
                return False
            kind = type(value)
            if (kind is bool and has_number) or (kind in (int, float) and has_boolean):
                raise GiveUp("in")  # the engines disagree (the reference compares true with 1 as Python does)
            return any(_same(value, item) for item in literals)

        return includes
    raise ValueError(f"not a predicate plan: {kind!r}")


def _operand_runner(operand: Plan) -> Callable[[Any], Any]:
    walk = _walker(operand[1])
    if operand[0] == "p":

        def scalar(data: Any) -> Any:
            value = walk(data)
            kind = type(value)
            if value is _UNDEFINED or value is None or kind is str or kind is bool:
                return value
            if (kind is int or kind is float) and _exact_number(value):
                return value
            raise GiveUp("value")  # an array or object (deep equality), a number JSON cannot carry exactly

        return scalar
    if operand[0] == "t":
        return lambda data: _type_of(walk(data))
    raise ValueError(f"not an operand: {operand[0]!r}")


def _walker(names: tuple[str, ...], exists: bool = False) -> Callable[[Any], Any]:
    """The path's value (or undefined); with ``exists``, whether it has one."""
    if not names or not all(type(name) is str for name in names):
        raise ValueError("not a path")
    undefined = False if exists else _UNDEFINED

    def walk(data: Any) -> Any:
        value = data
        for name in names:
            kind = type(value)
            if kind is dict:
                value = value.get(name, _UNDEFINED)
                if value is _UNDEFINED:
                    return undefined
            elif value is None or kind is str or kind is bool or kind is int or kind is float:
                return undefined  # a field of a value that is not an object
            else:
                raise GiveUp("path")  # an array (JSONata maps over it) or a host object
        return True if exists else value

    return walk


def _type_of(value: Any) -> Any:
    """JSONata's $type, for what a path can give."""
    kind = type(value)
    if value is _UNDEFINED:
        return _UNDEFINED
    if value is None:
        return "null"
    if kind is str:
        return "string"
    if kind is bool:
        return "boolean"
    if (kind is int or kind is float) and _exact_number(value):
        return "number"
    if kind is dict:
        return "object"
    if kind is list:
        return "array"  # the last step keeps an array value whole
    raise GiveUp("type")  # a number JSON cannot carry exactly, a host object


def _same(value: Any, literal: Any) -> bool:
    """JSONata's equality of two scalars: same type and same value (numbers as numbers, 1 = 1.0)."""
    if literal is None or value is None:
        return value is literal
    value_kind, literal_kind = type(value), type(literal)
    if value_kind is bool or literal_kind is bool:
        return value_kind is literal_kind and value == literal
    if value_kind is str or literal_kind is str:
        return value_kind is literal_kind and value == literal
    return bool(value == literal)  # int or float on both sides, each exact
