"""Session-wide test settings."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_CREATED: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # The preset cache of this test run (and of the CLI processes it starts),
    # never the developer's own ~/.cache.
    if "SIGNAL_ENGINE_CACHE_DIR" not in os.environ:
        _CREATED.append(tempfile.mkdtemp(prefix="signal-engine-test-cache-"))
        os.environ["SIGNAL_ENGINE_CACHE_DIR"] = _CREATED[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _CREATED:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("SIGNAL_ENGINE_CACHE_DIR", None)
