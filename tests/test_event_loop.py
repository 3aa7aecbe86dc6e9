"""The commands that deliver run on uvloop's loop (installed with the package), asyncio's own without it."""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path

import pytest

from engine import event_loop

CLI = Path(__file__).resolve().parents[1] / "engine" / "cli"
DELIVERING = ("run.py", "serve.py", "worker.py", "dlq.py", "demo.py")


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not installed on Windows")
def test_run_fast_runs_on_uvloop() -> None:
    assert event_loop.run_fast(_loop_module()).startswith("uvloop")


def test_without_uvloop_asyncio_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it then fails, as where it is not installed
    assert event_loop.fast_loop_factory() is None
    assert event_loop.run_fast(_loop_module()).startswith("asyncio")


@pytest.mark.parametrize("name", DELIVERING)
def test_the_delivering_commands_start_their_loop_through_run_fast(name: str) -> None:
    tree = ast.parse((CLI / name).read_text(encoding="utf-8"))
    calls = [
        node.func
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
    ]
    assert not [
        f for f in calls if isinstance(f, ast.Attribute) and f.attr == "run" and getattr(f.value, "id", "") == "asyncio"
    ]
    assert any(isinstance(f, ast.Name) and f.id == "run_fast" for f in calls)
