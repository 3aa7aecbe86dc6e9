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


# Tests of real components skip on a developer's machine that lacks them, saying what to
# install; CI installs them (.ci/run), so there such a skip would hide an untested promise.
_MISSING_COMPONENT = "not installed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and _MISSING_COMPONENT in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"under CI a missing component fails the test instead of skipping it: {report.longrepr}"
