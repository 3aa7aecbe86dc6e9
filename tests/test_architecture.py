"""The layout of ``engine/`` is part of the design: imports point down the flow.

cli → console/service → runtime → compile → delivery → pipeline → the preset model (language)
and the primitives; state is imported through its interfaces.
The compiler builds the stages, so no stage may import it; and destination
knowledge lives in presets, never in the engine's Python.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def _modules() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py"))


def _imports(path: Path, *, typing_only_too: bool = True, source: str | None = None) -> set[str]:
    """Absolute engine module names imported by ``path`` (relative imports resolved), in functions too.

    With ``typing_only_too=False``, imports under ``if TYPE_CHECKING:`` are
    left out: they name types without creating a dependency at run time.
    ``source`` is read as if it were the file's text.
    """
    package = ["engine", *path.relative_to(ENGINE).parent.parts]
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    skipped: set[int] = set()
    if not typing_only_too:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                skipped.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("engine"):
                continue
            found.add(target)
            for alias in node.names:
                found.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("engine"))
    return found


def _area(path: Path) -> str:
    rel = path.relative_to(ENGINE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


# Which areas each area may never import (directly or by name): everything above it.
_ABOVE_COMPILE = ("engine.runtime", "engine.cli", "engine.service", "engine.console", "engine.golden")
_ABOVE_STAGES = ("engine.compile", *_ABOVE_COMPILE)
FORBIDDEN = {
    "language": ("engine.pipeline", "engine.delivery", "engine.state", *_ABOVE_STAGES),
    "pipeline": ("engine.delivery", "engine.state", *_ABOVE_STAGES),
    "delivery": _ABOVE_STAGES,
    "state": ("engine.pipeline", "engine.delivery", *_ABOVE_STAGES),
    "compile": _ABOVE_COMPILE,
    # The console is a face over the stores: nothing below it knows it, and it knows no command or service.
    "runtime": ("engine.console", "engine.cli", "engine.service"),
    "service": ("engine.console", "engine.cli"),
    "console": ("engine.cli", "engine.service"),
    "outcome": ("engine.",),
    "redaction": ("engine.",),
    "log_context": ("engine.",),
    "event_identity": ("engine.",),
    "content_digest": ("engine.",),
}


# Exceptions to FORBIDDEN: the pure pipeline keeps identity through the store
# interface, whose module also holds the in-memory store (and does no I/O).
ALLOWED = {
    "pipeline": ("engine.state.identity",),
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def _imports_from_above(path: Path) -> list[str]:
    """What ``path`` imports from the areas above its own, type-only and in-function imports included."""
    banned = FORBIDDEN.get(_area(path), ())
    allowed = ALLOWED.get(_area(path), ())
    return sorted(
        name
        for name in _imports(path, typing_only_too=True)
        if any(_within(name, b) for b in banned) and not any(_within(name, a) for a in allowed)
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ENGINE)))
def test_imports_point_down(path: Path) -> None:
    """Type-only imports count: a name under ``if TYPE_CHECKING:`` still ties the module to the one above."""
    bad = _imports_from_above(path)
    assert not bad, f"{path.relative_to(ENGINE)} imports {bad}"


# The floors everything else stands on, and the folders above each of them.
_ABOVE_THE_GROUND = ("engine.delivery", "engine.compile", "engine.runtime", "engine.service", "engine.console")
GROUND = {
    "language": ("engine.pipeline", "engine.state", *_ABOVE_THE_GROUND, "engine.cli", "engine.golden"),
    "pipeline": ("engine.state", *_ABOVE_THE_GROUND, "engine.cli", "engine.golden"),
    "state": ("engine.pipeline", *_ABOVE_THE_GROUND, "engine.cli", "engine.golden"),
}


@pytest.mark.parametrize("area", sorted(GROUND))
def test_the_ground_floors_may_import_nothing_from_a_folder_above_them(area: str) -> None:
    """language/, pipeline/ and state/ ban every folder above them, so test_imports_point_down holds them to it.

    The pipeline's one exception is the identity store's interface (ALLOWED).
    """
    assert set(GROUND[area]) <= set(FORBIDDEN[area])


def test_the_import_reader_sees_type_only_and_in_function_imports() -> None:
    """An import under ``if TYPE_CHECKING:`` or inside a function is an arrow too: the model once named three stages so."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..pipeline.output_contract import OutputContract\n"
        "def f():\n    from ..delivery import sender\n"
    )
    seen = _imports(ENGINE / "language" / "model.py", source=code)
    assert {"engine.pipeline.output_contract.OutputContract", "engine.delivery.sender"} <= seen
    assert "engine.pipeline.output_contract" not in _imports(
        ENGINE / "language" / "model.py", source=code, typing_only_too=False
    )


def test_the_state_interface_the_pipeline_uses_does_no_io() -> None:
    path = ENGINE / "state" / "identity.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    assert not modules & {"sqlite3", "os", "pathlib", "io", "socket", "aiohttp", "asyncio", "shutil", "tempfile"}
    assert all(_within(name, "engine.language.model") for name in _imports(path)), _imports(path)


VENDOR = re.compile(
    r"outreach|hubspot|salesloft|close\.com|api\.close|prospect|facebook|fbtrace|salesforce", re.IGNORECASE
)


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if "sandbox" not in p.parts and p.name != "sandbox.py"],
    ids=lambda p: str(p.relative_to(ENGINE)),
)
def test_no_destination_knowledge_in_engine_code(path: Path) -> None:
    """Comments and docstrings may give examples; code may not name a vendor."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    hits = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and id(n) not in docstrings
        and VENDOR.search(n.value)
    ]
    assert not hits, f"{path.relative_to(ENGINE)} names a destination in code: {hits[:3]}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ENGINE)))
def test_loggers_are_named_after_their_module(path: Path) -> None:
    """``package_logger(__name__)``: records are found (and silenced) under ``engine.*``.

    Made through ``engine/loggers.py`` only, which adds the package's NullHandler with the first logger
    (``import engine`` no longer imports logging). The Engine's parts in runtime/ (its base classes, by
    concern) log as the Engine, ``engine.runtime``: ``package_logger(__package__)``.
    """
    if path == ENGINE / "loggers.py":
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        where = f"{path.relative_to(ENGINE)}:{node.lineno}"
        assert called != "getLogger", f"{where}: use package_logger(__name__) (engine/loggers.py)"
        if called == "package_logger" and node.args:
            arg = node.args[0]
            named = isinstance(arg, ast.Name) and (
                arg.id == "__name__" or (arg.id == "__package__" and path.parts[-2] == "runtime")
            )
            root = isinstance(arg, ast.Name) and arg.id == "ROOT"
            assert named or root, f"{where}: use package_logger(__name__)"


def test_the_wheel_ships_every_package_and_data_folder(tmp_path: Path) -> None:
    """The wheel holds every module, preset and schema of the checkout, the demo's events, and py.typed.

    (An installed engine once lacked engine/delivery/auth/ and failed on its
    first delivery, when packages were listed by hand.) Packages are found by
    setup.py; this builds the wheel the way pip does and reads what is in it.
    """
    import shutil
    import subprocess
    import sys
    import zipfile

    root = ENGINE.parent
    source = tmp_path / "source"  # a copy: a build/ folder left in the checkout would hide what is missing
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("engine", "presets", "schemas"):
        shutil.copytree(root / folder, source / folder, ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(root / name, source / name)
    build = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=source, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p.relative_to(root).as_posix() for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts}
    wanted.add("engine/py.typed")
    for top, pattern in (("presets", "*.yaml"), ("schemas", "*.json")):
        wanted |= {"engine/" + p.relative_to(root).as_posix() for p in (root / top).rglob(pattern)}
    wanted |= {p.relative_to(root).as_posix() for p in (ENGINE / "examples").glob("*.ndjson")}  # signal-engine demo's
    missing = sorted(wanted - shipped)
    assert not missing, f"the wheel lacks {missing}"
    assert not [name for name in shipped if name.startswith(("tests/", "presets/", "schemas/"))]


def test_the_architecture_document_names_every_part_of_the_engine() -> None:
    """docs/architecture.md says where things are: a new folder or top-level module must be placed in it."""
    text = (ENGINE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    parts = {p.name + "/" for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    parts |= {p.name for p in ENGINE.glob("*.py") if not p.name.startswith("__")}
    missing = sorted(part for part in parts if part not in text)
    assert not missing, f"docs/architecture.md does not mention {missing}"
