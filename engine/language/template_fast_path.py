"""A fast path for JSONata that is a plain template: objects and arrays of paths and literals.

Most mappings are a document with the input's values put in place:
``{"data": {"attributes": {"emails": [traits.email], "name": traits.name ? traits.name : $join([...], " ")}}}``.
Evaluating one in a JSONata engine costs more than everything else the
engine does for a lead, most of it converting the input and the result
between Python and the engine. Such an expression is planned once, from the
reference parser's syntax tree, into plain tuples (kept in the preset cache,
so a start imports no JSONata engine to use it), and run here as Python.

The plan covers only what can be matched exactly: object constructors with
literal string keys, array constructors, string, ``true``, ``false`` and
``null`` literals, paths of plain field names from the input, ``a ? b : c``
and ``$join([...], "literal")``. At run time a path must walk through
objects to a string, a boolean or null; anything else (an array, a
number, an object, a value ``$join`` would refuse) makes the plan give up
for that input, and the JSONata engine evaluates it as before. The results
are compared with both JSONata engines' in the differential tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A plan is plain data (tuples, strings, booleans, None), so marshal can keep it:
#   ("s", text) | ("v", True/False/None)        literals
#   ("p", (name, ...))                           a path of field names from the input
#   ("o", ((key, plan), ...))                    an object constructor
#   ("a", (plan, ...))                           an array constructor
#   ("c", condition, then, otherwise or None)    a ? b : c
#   ("j", array plan, separator text or None)    $join(array, separator)
Plan = tuple[Any, ...]

MAX_PLAN_DEPTH = 32  # far beyond any document; keeps the planner and the runner off the recursion limit

# The syntax-tree attributes a plain name step, literal or constructor may carry; any other that is set
# (a predicate, a stage, a group, keepArray, a focus or index binding, ...) is outside the plan.
_NODE_ATTRIBUTES = frozenset({"_outer_instance", "type", "value", "id", "bp", "lbp", "position", "level"})


class GiveUp(Exception):
    """This input is outside what the plan matches exactly: the JSONata engine evaluates it."""


GIVE_UP: Any = object()  # what a runner returns for an input the plan does not match exactly
_UNDEFINED: Any = object()  # JSONata's undefined: a key with it is left out, an array item is skipped


def reference_tree(source: str) -> Any | None:
    """``source``'s syntax tree from the reference parser (what every fast path is planned from), or None."""
    import jsonata

    try:
        return jsonata.Jsonata(source).ast
    except Exception:  # noqa: BLE001 - not parsing is not planning; the compiler reports syntax
        return None


def plan_of(source: str) -> Plan | None:
    """The plan of ``source``, or None when it is not a plain template (or does not parse)."""
    tree = reference_tree(source)
    return None if tree is None else plan_of_tree(tree)


def plan_of_tree(tree: Any) -> Plan | None:
    """The plan of a syntax tree of the reference parser, or None."""
    try:
        plan = _plan(tree, 0)
    except GiveUp:
        return None
    return plan if plan[0] in ("o", "a") else None  # a bare path or literal gains nothing


def plain_node(node: Any, *allowed: str) -> None:
    """Give up unless ``node`` sets no syntax-tree attribute but the plain ones and ``allowed``."""
    for name, value in vars(node).items():
        if name in _NODE_ATTRIBUTES or name in allowed:
            continue
        if value is not None and value is not False and value != [] and value != ():
            raise GiveUp(name)


def _plan(node: Any, depth: int) -> Plan:
    if depth > MAX_PLAN_DEPTH:
        raise GiveUp("depth")
    kind = getattr(node, "type", None)
    if kind == "string":
        plain_node(node)
        if not isinstance(node.value, str):
            raise GiveUp("string")
        return ("s", node.value)
    if kind == "value":
        plain_node(node)
        if node.value not in (True, False, None) or (node.value is not None and type(node.value) is not bool):
            raise GiveUp("value")
        return ("v", node.value)
    if kind == "path":
        plain_node(node, "steps")
        names = []
        for step in node.steps or []:
            if getattr(step, "type", None) != "name" or not isinstance(step.value, str):
                raise GiveUp("step")
            plain_node(step)
            names.append(step.value)
        if not names:
            raise GiveUp("path")
        return ("p", tuple(names))
    if kind == "unary" and node.value == "{":
        plain_node(node, "lhs_object")
        pairs = []
        seen = set()
        for key, value in node.lhs_object or []:
            if getattr(key, "type", None) != "string" or not isinstance(key.value, str) or key.value in seen:
                raise GiveUp("key")  # a computed or repeated key: JSONata's rules, not ours
            plain_node(key)
            seen.add(key.value)
            pairs.append((key.value, _plan(value, depth + 1)))
        return ("o", tuple(pairs))
    if kind == "unary" and node.value == "[":
        plain_node(node, "expressions", "consarray")
        return ("a", tuple(_plan(item, depth + 1) for item in node.expressions or []))
    if kind == "condition":
        plain_node(node, "condition", "then", "_else")
        otherwise = node._else
        return (
            "c",
            _plan(node.condition, depth + 1),
            _plan(node.then, depth + 1),
            _plan(otherwise, depth + 1) if otherwise is not None else None,
        )
    if kind == "function":
        plain_node(node, "procedure", "arguments")
        procedure = node.procedure
        arguments = node.arguments or []
        if getattr(procedure, "type", None) != "variable" or procedure.value != "join":
            raise GiveUp("function")
        plain_node(procedure)
        if not 1 <= len(arguments) <= 2:
            raise GiveUp("arguments")
        items = _plan(arguments[0], depth + 1)
        if items[0] != "a":
            raise GiveUp("join")
        separator = None
        if len(arguments) == 2:
            sep = _plan(arguments[1], depth + 1)
            if sep[0] != "s":
                raise GiveUp("separator")
            separator = sep[1]
        return ("j", items, separator)
    raise GiveUp(str(kind))


def fits(plan: Plan, max_depth: int, max_sequence_length: int) -> bool:
    """Whether the engines could evaluate ``plan`` within these limits whatever the input.

    A preset may set ``limits.expression`` low enough that an engine stops a
    template (each counts depth its own way; the reference counts a constructed
    array against the sequence limit). The plan is then not used, so the
    engine's verdict stands. With headroom: the default limits leave plenty.
    """
    depth, leaves = _size(plan)
    return 3 * depth + 10 <= max_depth and leaves <= max_sequence_length


def _size(plan: Plan) -> tuple[int, int]:
    """(nesting depth, number of leaves): a path counts its steps, a constructed array at most its leaves."""
    kind = plan[0]
    if kind in ("s", "v"):
        return 1, 1
    if kind == "p":
        return len(plan[1]), 1
    if kind == "o":
        parts = [_size(value) for _, value in plan[1]]
    elif kind == "a":
        parts = [_size(item) for item in plan[1]]
    elif kind == "c":
        parts = [_size(part) for part in plan[1:] if part is not None]
    elif kind == "j":
        parts = [_size(plan[1])]
    else:
        raise ValueError(f"not a plan: {kind!r}")
    return 1 + max((d for d, _ in parts), default=0), max(1, sum(n for _, n in parts))


def runner(plan: Plan) -> Callable[[Any], Any]:
    """A function of the input giving the plan's result, or :data:`GIVE_UP` where it cannot be exact."""
    run = _build(plan)

    def evaluate(data: Any) -> Any:
        try:
            result = run(data)
        except GiveUp:
            return GIVE_UP
        return None if result is _UNDEFINED else result  # the engines give None for undefined

    return evaluate


def _build(plan: Plan) -> Callable[[Any], Any]:
    kind = plan[0]
    if kind in ("s", "v"):
        literal = plan[1]
        return lambda data: literal
    if kind == "p":
        return _path(plan[1])
    if kind == "o":
        pairs = tuple((key, _build(value)) for key, value in plan[1])

        def build_object(data: Any) -> Any:
            out = {}
            for key, run in pairs:
                value = run(data)
                if value is not _UNDEFINED:
                    out[key] = value
            return out

        return build_object
    if kind == "a":
        items = tuple((_build(item), item[0] == "a") for item in plan[1])

        def build_array(data: Any) -> Any:
            out: list[Any] = []
            for run, constructed in items:
                value = run(data)
                if value is _UNDEFINED:
                    continue
                if type(value) is list and not constructed:
                    out.extend(value)  # JSONata flattens an array that an item evaluates to
                else:
                    out.append(value)
            return out

        return build_array
    if kind == "c":
        condition, then = _build(plan[1]), _build(plan[2])
        otherwise = _build(plan[3]) if plan[3] is not None else None

        def choose(data: Any) -> Any:
            if _truthy(condition(data)):
                return then(data)
            return otherwise(data) if otherwise is not None else _UNDEFINED

        return choose
    if kind == "j":
        strings = _build(plan[1])
        separator = plan[2] if plan[2] is not None else ""

        def join(data: Any) -> Any:
            values = strings(data)
            for value in values:
                if type(value) is not str:
                    raise GiveUp("join")  # JSONata's type error, worded by the engine
            return separator.join(values)

        return join
    raise ValueError(f"not a plan: {kind!r}")


def _path(names: tuple[str, ...]) -> Callable[[Any], Any]:
    if len(names) == 2:  # root.field, nearly every path of a mapping: the loop unrolled
        return _path2(*names)

    def walk(data: Any) -> Any:
        value = data
        for name in names:
            if type(value) is not dict:
                raise GiveUp("path")  # an array (JSONata maps over it), a string, a number: not matched here
            value = value.get(name, _UNDEFINED)
            if value is _UNDEFINED:
                return _UNDEFINED
        kind = type(value)
        if kind is str or kind is bool or value is None:
            return value
        raise GiveUp("value")  # numbers (integer or float as the engine writes it), arrays, objects

    return walk


def _path2(root: str, name: str) -> Callable[[Any], Any]:
    def walk(data: Any) -> Any:
        if type(data) is not dict:
            raise GiveUp("path")
        value = data.get(root, _UNDEFINED)
        if value is _UNDEFINED:
            return _UNDEFINED
        if type(value) is not dict:
            raise GiveUp("path")
        value = value.get(name, _UNDEFINED)
        kind = type(value)
        if value is _UNDEFINED or kind is str or kind is bool or value is None:
            return value
        raise GiveUp("value")

    return walk


def _truthy(value: Any) -> bool:
    """JSONata's boolean cast, for what a plan's parts can give."""
    if value is _UNDEFINED or value is None:
        return False
    if type(value) is str:
        return value != ""
    if type(value) is bool:
        return value
    raise GiveUp("condition")  # an array or an object: JSONata's rules for those are not matched here
