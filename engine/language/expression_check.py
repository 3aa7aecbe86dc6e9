"""Static checks of a preset's JSONata: mistakes that would make every event come out wrong.

JSONata is forgiving at run time: ``traits.cty`` or ``values.tagg`` is just
undefined, and the key silently disappears from every document. ``check``
therefore reads each expression's syntax tree and refuses, with the exact
position:

* a root path into an input that does not exist (``trait.email``);
* ``traits.X`` where X is not a declared trait, ``values.X`` that no event
  row defines, ``settings.X`` naming an unknown or a secret setting;
* a call to a function that is neither built in (JSONata's library and the
  engine's ``$sha256`` and ``$md5``) nor bound in the expression.

Only paths evaluated against the expression's own input are checked: inside
a predicate, a nested step or a lambda the context is something else, and a
guess there would refuse valid presets.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .expressions import HOST_FUNCTIONS

# What a root may contain: the names it is known to have, or None for "anything".
Roots = Mapping[str, Collection[str] | None]


@dataclass(frozen=True)
class Finding:
    position: int  # offset of the offending token's first character in the expression
    message: str


@dataclass(frozen=True)
class InputShape:
    """What an expression sees as ``$``: its roots, plus the secret settings for a clearer message."""

    roots: Roots
    secret_settings: frozenset[str] = frozenset()
    described_as: str = "this expression"


def builtin_functions() -> frozenset[str]:
    """The function library every supported JSONata engine provides, and the engine's own ($sha256, $md5)."""
    import jsonata

    if jsonata.Jsonata.static_frame is None:
        jsonata.Jsonata("1")  # builds the static frame
    return frozenset(jsonata.Jsonata.static_frame.bindings) | frozenset(HOST_FUNCTIONS)


def analyse(source: str, shape: InputShape) -> list[Finding]:
    """Problems in ``source`` (already known to compile); empty when none are found."""
    import jsonata

    try:
        tree = jsonata.Jsonata(source).ast
    except Exception:  # noqa: BLE001 - syntax is reported elsewhere
        return []
    bound = _bound_names(tree)
    findings: list[Finding] = []
    builtins = builtin_functions()
    for node in _walk(tree):
        if node.type == "function" and getattr(node.procedure, "type", None) == "variable":
            name = node.procedure.value
            if name and name not in builtins and name not in bound:
                findings.append(
                    Finding(
                        _start(node.procedure, len(name) + 1),
                        f"unknown function ${name}() (not a JSONata built-in and not bound with :=)",
                    )
                )
    _check_paths(tree, shape, findings, root=True)
    return sorted(findings, key=lambda f: f.position)


def _check_paths(node: Any, shape: InputShape, findings: list[Finding], *, root: bool) -> None:
    if node is None:
        return
    if node.type == "path":
        steps = node.steps or []
        if root and steps and steps[0].type == "name" and not _has_context_ops(steps[0]):
            _check_root_path(steps, shape, findings)
        for i, step in enumerate(steps):
            # The first step is evaluated in the current context, the rest in the previous step's results.
            _check_paths_in(step, shape, findings, root=root and i == 0, own_context_ops=True)
        return
    if node.type == "lambda":
        _check_paths(node.body, shape, findings, root=False)
        return
    _check_paths_in(node, shape, findings, root=root, own_context_ops=False)


def _check_paths_in(
    node: Any, shape: InputShape, findings: list[Finding], *, root: bool, own_context_ops: bool
) -> None:
    for attr, child in _children(node):
        nested = own_context_ops and attr in ("stages", "predicate", "group", "focus", "tuple")
        _check_paths(child, shape, findings, root=root and not nested)


def _check_root_path(steps: list[Any], shape: InputShape, findings: list[Finding]) -> None:
    first = steps[0].value
    roots = shape.roots
    if first not in roots:
        findings.append(
            Finding(
                _start(steps[0], len(first)),
                f"'{first}' is not an input of {shape.described_as} (it sees: {', '.join(roots)})",
            )
        )
        return
    known = roots[first]
    if known is None or len(steps) < 2 or steps[1].type != "name":
        return
    name = steps[1].value
    if name in known:
        return
    where = _start(steps[1], len(name))
    if first == "settings" and name in shape.secret_settings:
        findings.append(Finding(where, f"settings.{name} is a secret setting; secrets are only usable in auth:"))
    elif first == "traits":
        findings.append(
            Finding(where, f"traits.{name} is not a declared trait (identity.traits: {', '.join(sorted(known))})")
        )
    elif first == "values":
        listed = ", ".join(sorted(known)) or "none"
        findings.append(
            Finding(where, f"values.{name} is not defined by any event row that uses this action (values: {listed})")
        )
    else:
        listed = ", ".join(sorted(known)) or "none"
        findings.append(Finding(where, f"{first}.{name} does not exist ({first}: {listed})"))


def _has_context_ops(step: Any) -> bool:
    return bool(getattr(step, "focus", None) or getattr(step, "tuple", None))


def _start(node: Any, length: int) -> int:
    """jsonata reports the offset just past a token; the token starts ``length`` before it."""
    position = getattr(node, "position", None) or 0
    return max(0, position - length)


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    for attr, value in vars(node).items():
        if attr in ("_outer_instance", "environment", "_jsonata_lambda", "ancestor", "next_function"):
            continue
        if _is_node(value):
            yield attr, value
        elif isinstance(value, list):
            for item in value:
                if _is_node(item):
                    yield attr, item
                elif isinstance(item, (list, tuple)):
                    for sub in item:
                        if _is_node(sub):
                            yield attr, sub


def _is_node(value: Any) -> bool:
    return hasattr(value, "type") and hasattr(value, "position") and not isinstance(value, (str, bytes))


def _walk(node: Any) -> Iterator[Any]:
    if node is None:
        return
    yield node
    for _, child in _children(node):
        yield from _walk(child)


def _bound_names(tree: Any) -> set[str]:
    """Names bound with ``:=`` or as lambda parameters anywhere in the expression."""
    names: set[str] = set()
    for node in _walk(tree):
        if node.type == "bind" and getattr(node.lhs, "value", None):
            names.add(node.lhs.value)
        elif node.type == "lambda":
            names.update(a.value for a in node.arguments or [] if getattr(a, "value", None))
    return names


@dataclass(frozen=True)
class KeyUse:
    """A literal key of an object the expression builds, and where in the result it lands."""

    path: tuple[str, ...]  # the keys above it; "[]" for an array item
    key: str
    position: int  # offset of the key's first character (its opening quote)


def result_keys(source: str) -> list[KeyUse]:
    """The literal keys of the objects that make up the expression's result.

    Followed through what certainly builds the result: blocks (their last
    expression), object and array constructors, both branches of a
    condition and ``$merge([...])``. Anything else (a path, a lambda, a
    computed key) is not guessed at, so nothing valid is refused.
    """
    import jsonata

    try:
        tree = jsonata.Jsonata(source).ast
    except Exception:  # noqa: BLE001 - syntax is reported elsewhere
        return []
    found: list[KeyUse] = []
    _collect_keys(tree, (), found, source)
    return found


def _collect_keys(node: Any, path: tuple[str, ...], found: list[KeyUse], source: str) -> None:
    if node is None or not _is_node(node):
        return
    if node.type == "block" and node.expressions:
        _collect_keys(node.expressions[-1], path, found, source)
    elif node.type == "unary" and node.value == "{" and node.lhs_object:
        for pair in node.lhs_object:
            key, value = pair[0], pair[1]
            if getattr(key, "type", None) == "string" and isinstance(key.value, str):
                found.append(KeyUse(path, key.value, _string_start(key, source)))
                _collect_keys(value, path + (key.value,), found, source)
    elif node.type == "unary" and node.value == "[":
        for item in node.expressions or []:
            _collect_keys(item, path + ("[]",), found, source)
    elif node.type == "condition":
        _collect_keys(node.then, path, found, source)
        _collect_keys(getattr(node, "_else", None), path, found, source)
    elif node.type == "function" and getattr(node.procedure, "value", None) == "merge" and node.arguments:
        array = node.arguments[0]
        if array.type == "unary" and array.value == "[":
            for item in array.expressions or []:
                _collect_keys(item, path, found, source)


def _string_start(node: Any, source: str) -> int:
    """Where a string literal starts: its position is just past the closing quote."""
    end = getattr(node, "position", 0) or 0
    for quote in ('"', "'"):
        start = source.rfind(quote, 0, max(0, end - 1))
        if start >= 0 and source[start + 1 : end - 1] == node.value:
            return start
    return max(0, end - len(node.value) - 2)
