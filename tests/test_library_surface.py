"""What a host imports: the names the embedding guide promises, its network-free example as written, the version."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import engine
from engine import Outcome, Pipeline, SettingsError, load_preset, resolve_settings
from engine import outcome as oc

REPO = Path(__file__).resolve().parents[1]
# The embedding guide (docs/guides/embedding.md) documents the library surface.
GUIDE = (REPO / "docs" / "guides" / "embedding.md").read_text(encoding="utf-8")
LEAD = {
    "type": "track",
    "event": "Signed Up",
    "userId": "u-1",
    "traits": {"email": "jane@acme.com"},
    "context": {"consent": {"canonical": {"marketing": True}}},
}


def test_the_documented_imports_work() -> None:
    from engine import Engine, Outcome, Pipeline, SettingsError, load_preset, resolve_settings  # noqa: F401

    assert {"Engine", "Outcome", "Pipeline", "SettingsError", "load_preset", "resolve_settings"} <= set(engine.__all__)
    assert "from engine import Engine, Outcome, Pipeline, SettingsError, load_preset, resolve_settings" in GUIDE


def _guide_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE, re.DOTALL)
    matching = [b for b in blocks if marker in b]
    assert len(matching) == 1, f"expected one embedding-guide python block containing {marker!r}"
    return matching[0]


def test_the_guide_s_network_free_example_runs_as_written(tmp_path: Path) -> None:
    code = _guide_block("pipeline.prepare(event)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # What the guide says it prints: the product page's request, the email trimmed and lower-cased.
    assert proc.stdout == "POST https://api.outreach.io/api/v2/prospects ['jane.doe@acme.com']\n"
    assert "It prints `POST https://api.outreach.io/api/v2/prospects ['jane.doe@acme.com']`." in GUIDE


def test_a_pipeline_takes_a_plain_dict_of_settings() -> None:
    pipeline = Pipeline(load_preset("outreach/lead-capture"), {"consent_categories": ["marketing"]})
    assert pipeline.dry_run(LEAD).outcome == oc.WOULD_SEND
    refusing = Pipeline(load_preset("outreach/lead-capture"), {"consent_categories": ["analytics"]})
    assert refusing.dry_run(LEAD).reason == oc.NO_CONSENT


def test_resolve_settings_reports_every_problem_in_a_settings_error() -> None:
    preset = load_preset("outreach/lead-capture")
    with pytest.raises(SettingsError) as info:
        resolve_settings(preset, {"client_id": 12345, "consent_categories": "marketing", "nope": 1})
    # client_id, consent_categories, nope, and the missing client_secret (the refresh token may be in the state)
    assert len(info.value.problems) == 4
    settings = resolve_settings(preset, {"client_id": "12345"}, dry_run=True)
    assert settings["client_id"] == "12345"
    with pytest.raises(SettingsError):
        Pipeline(preset, {"client_id": 12345})


def test_outcome_to_dict_is_the_documented_line() -> None:
    out = Outcome(
        3,
        "m-3",
        oc.FAILED,
        reason=None,
        detail="why",
        cause="http_422",
        request={"method": "POST"},
        response={"status": 422},
        attempts=1,
    )
    assert list(out.to_dict()) == [
        "index",
        "messageId",
        "outcome",
        "cause",
        "detail",
        "attempts",
        "request",
        "response",
    ]
    assert "`Outcome.to_dict()` is the JSON line `run` prints" in GUIDE


def test_version_is_the_package_version_everywhere(tmp_path: Path) -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert engine.__version__ == metadata.version("signal-engine") == declared
    for argv in ([sys.executable, "-m", "engine", "--version"], [sys.executable, "-m", "engine.cli", "--version"]):
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"signal-engine {declared}\n"


def test_python_dash_m_engine_is_the_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "check"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("ok: outreach/lead-capture") for line in proc.stdout.splitlines()), proc.stdout
