"""Every ``cause`` the engine can put on an outcome has its one definition in ``engine/outcome.py``.

Hosts branch on causes and the outcomes reference (docs/reference/outcomes.md)
tells a user what each means and what to do; a cause written as a string
somewhere in the engine and missing from ``CAUSES`` is one that page cannot
explain. The engine's source is read here, not imported: every place a cause
is given (a ``cause=`` argument, a parameter named ``cause``, an exception
that carries one, a ``"cause"`` field, a variable named ``cause``) must give a
defined cause, either as a string or as a constant of ``engine/outcome.py``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import outcome as oc

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "engine"
# Exceptions whose first argument becomes the outcome's cause though their parameter is named otherwise.
CARRIERS = {"TransportError": 0}  # its ``kind`` (timeout, connection...) is the cause of a request with no answer


def _callables_with_a_cause(trees: dict[Path, ast.Module]) -> dict[str, int]:
    """Every function and class in the engine that takes a ``cause``: its name and the argument's position."""
    found = dict(CARRIERS)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if init is not None:
                    names = [a.arg for a in init.args.args][1:]  # without self
                    if "cause" in names:
                        found[node.name] = names.index("cause")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "__init__":
                names = [a.arg for a in node.args.args]
                if names and names[0] in ("self", "cls"):
                    names = names[1:]
                if "cause" in names:
                    found[node.name] = names.index("cause")
    return found


def _outcome_aliases(tree: ast.Module) -> set[str]:
    """The names ``engine/outcome.py`` is imported under in a module (``oc``)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "outcome" and (node.level or (node.module or "") == "engine"):
                    aliases.add(alias.asname or alias.name)
    return aliases


def _cause_expressions(tree: ast.Module, takes_cause: dict[str, int]) -> Iterator[ast.expr]:
    """Every expression in a module whose value becomes an outcome's cause."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "cause":
                    yield keyword.value
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            position = takes_cause.get(name)
            if position is not None and len(node.args) > position:
                yield node.args[position]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
                if (name.lower() == "cause" or name.lower().endswith("_cause")) and node.value is not None:
                    yield node.value
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "cause":
                    yield value


def _given(
    expr: ast.expr, functions: dict[str, ast.FunctionDef], aliases: set[str], depth: int = 0
) -> Iterator[tuple[int, str]]:
    """The causes an expression can give, as written: strings, outcome constants (``oc.X``) and f-strings."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        yield expr.lineno, expr.value
    elif isinstance(expr, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in expr.values]
        yield expr.lineno, "".join(str(p) for p in parts)
    elif isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in aliases:
        value = getattr(oc, expr.attr, None)
        yield expr.lineno, value if isinstance(value, str) else f"<engine/outcome.py has no {expr.attr}>"
    elif (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and isinstance(expr.func.value, ast.Name)
        and expr.func.value.id in aliases
        and expr.func.attr == "http_cause"
    ):
        yield expr.lineno, oc.HTTP_STATUS_PREFIX + "{}"
    elif isinstance(expr, ast.IfExp):
        yield from _given(expr.body, functions, aliases, depth)
        yield from _given(expr.orelse, functions, aliases, depth)
    elif isinstance(expr, ast.BoolOp):
        for value in expr.values:
            yield from _given(value, functions, aliases, depth)
    elif isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in functions and depth < 3:
        # A helper of the same module that picks the cause (``_cause(exc)``): what it returns.
        for node in ast.walk(functions[expr.func.id]):
            if isinstance(node, ast.Return) and node.value is not None:
                yield from _given(node.value, functions, aliases, depth + 1)
    # Anything else (a variable, ``exc.cause``) passes on a cause given elsewhere, where it is checked.


def causes_in_the_engine() -> list[tuple[str, str]]:
    """``(place, cause)`` for every cause the engine's source gives."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(ENGINE.rglob("*.py"))}
    takes_cause = _callables_with_a_cause(trees)
    found = []
    for path, tree in trees.items():
        if path == ENGINE / "outcome.py":
            continue  # the definition itself
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        aliases = _outcome_aliases(tree)
        for expr in _cause_expressions(tree, takes_cause):
            for line, cause in _given(expr, functions, aliases):
                found.append((f"{path.relative_to(REPO)}:{line}", cause))
    return found


def _defined(cause: str) -> bool:
    # An f-string's holes stand for the family's variable part: http_{} is http_<status>.
    return oc.is_cause(cause) or any(re.sub(r"<[^>]+>", "{}", key) == cause for key in oc.CAUSE_PATTERNS)


def test_every_cause_the_engine_gives_is_defined() -> None:
    found = causes_in_the_engine()
    # The scan must see the engine's causes, or this test would pass by finding nothing.
    seen = {cause for _, cause in found}
    assert {oc.MAPPING_ERROR, oc.NOT_SENT, oc.POISON, oc.TIMEOUT, oc.INTERNAL_ERROR, "http_{}"} <= seen
    assert len(found) > 40
    undefined = sorted(f"{place}: {cause!r}" for place, cause in found if not _defined(cause))
    assert not undefined, (
        "causes with no definition in engine/outcome.py (add a constant and a CAUSES entry, then run "
        f"python docs/gen_reference.py): {undefined}"
    )


def test_every_cause_in_the_golden_files_is_defined() -> None:
    """What the engine really put on outcomes, as the golden files pin it."""
    causes: dict[str, str] = {}

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if node.get("outcome") in (oc.FAILED, oc.DEAD_LETTERED) and isinstance(node.get("cause"), str):
                causes.setdefault(node["cause"], where)
            for child in node.values():
                walk(child, where)
        elif isinstance(node, list):
            for child in node:
                walk(child, where)

    for path in sorted((REPO / "golden").rglob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")), str(path.relative_to(REPO)))
    assert len(causes) >= 4
    undefined = {cause: where for cause, where in causes.items() if not oc.is_cause(cause)}
    assert not undefined, f"golden files pin causes with no definition in engine/outcome.py: {undefined}"


@pytest.mark.parametrize("name", [*oc.CAUSES, *oc.CAUSE_PATTERNS])
def test_every_cause_is_explained_in_the_reference(name: str) -> None:
    cause = oc.CAUSES.get(name) or oc.CAUSE_PATTERNS[name][1]
    assert cause.meaning.strip() and cause.remedy.strip(), f"{name}: say what it means and what to do"
    assert set(cause.outcomes) <= {oc.FAILED, oc.DEAD_LETTERED} and cause.outcomes
    page = (REPO / "docs" / "reference" / "outcomes.md").read_text(encoding="utf-8")
    assert f"| `{name}` |" in page, f"{name} is not in docs/reference/outcomes.md: run python docs/gen_reference.py"


def test_the_http_family_names_a_status_and_nothing_else() -> None:
    assert oc.http_cause(404) == "http_404" and oc.is_cause("http_404") and oc.is_cause("http_503")
    assert not oc.is_cause("http_") and not oc.is_cause("http_4044") and not oc.is_cause("http_abc")
    assert not oc.is_cause("template_error")


def test_every_defined_cause_is_given_somewhere() -> None:
    """A definition no code gives is a stale line in the reference."""
    seen = {cause for _, cause in causes_in_the_engine()}
    unused = sorted(name for name in oc.CAUSES if name not in seen)
    assert not unused, f"engine/outcome.py defines causes the engine never gives: {unused}"
