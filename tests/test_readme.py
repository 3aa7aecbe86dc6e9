"""The README is the front door: short, its commands the ones CI runs, its example true, its links good.

The details live in the docs site (docs/); what the README shows must still
hold: the two quick-start commands (the second is exactly CI's test command),
the dry run that tests/test_examples.py runs, the short example's output, the
preset excerpt, and every link.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
GETTING_STARTED = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")

SET_UP_AND_DEMO = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/signal-engine demo"
TEST_SUITE = ".venv/bin/python -m pytest -q"
DRY_RUN = ".venv/bin/signal-engine run outreach/lead-capture --events examples/lead-capture.ndjson --dry-run"


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def test_the_readme_is_at_most_150_lines() -> None:
    assert len(README.splitlines()) <= 150


def test_the_quick_start_is_two_commands_the_first_delivers_the_second_is_ci_s() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [block.strip() for block in blocks(quick_start, "bash")]
    assert commands[:2] == [SET_UP_AND_DEMO, TEST_SUITE]
    assert commands[2] == DRY_RUN  # the next example; tests/test_examples.py runs it
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert TEST_SUITE in ci, "the README's test command must be exactly the one .ci/run runs"
    # The docs' getting-started page starts with the same two commands.
    assert [block.strip() for block in blocks(GETTING_STARTED, "bash")][:2] == [SET_UP_AND_DEMO, TEST_SUITE]


def test_the_short_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    (command,) = [b for b in blocks(README, "bash") if b.startswith("echo ")]
    (shown,) = blocks(README, "json")
    # The same command with this interpreter's engine instead of the checkout's .venv.
    command = command.replace(".venv/bin/signal-engine", f"'{sys.executable}' -m engine")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown
    outcome = json.loads(shown)
    # What the prose says about it: trimmed and lower-cased email, the event table's tag, a masked credential.
    attributes = outcome["request"]["body"]["data"]["attributes"]
    assert attributes["emails"] == ["jane.doe@acme.com"]
    assert attributes["tags"] == ["Signal", "demo-request"]
    assert outcome["request"]["headers"]["Authorization"] == "Bearer ***"


def test_the_preset_excerpt_is_the_preset_s_own_text() -> None:
    (excerpt,) = blocks(README, "yaml")
    shown = YAML(typ="safe", pure=True).load(excerpt)
    preset = YAML(typ="safe", pure=True).load((REPO / "presets" / "outreach" / "lead-capture.yaml").read_text())
    assert shown["events"]["defaults"] == preset["events"]["defaults"]
    for name, row in shown["events"]["track"].items():
        assert preset["events"]["track"][name] == row
    for action, spec in shown["actions"].items():
        mapping = " ".join(preset["actions"][action]["mapping"].split())
        pairs = re.findall(r'"(\w+)": (\[[^\]]*\]|[\w.]+)', spec["mapping"])
        assert len(pairs) >= 2
        for key, expression in pairs:
            if key in ("data", "attributes"):
                continue
            assert f'"{key}": {expression}' in mapping, f"{key}: {expression} is not what the preset maps"


def test_every_link_in_the_readme_is_a_file_of_the_repository() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert len(links) > 20
    for link in links:
        assert not link.startswith(("http://", "https://", "/")), f"{link}: use a relative link"
        path = link.split("#", 1)[0]
        assert (REPO / path).is_file(), f"README links to {link}, which does not exist"
        assert not path.startswith("docs/") or path.endswith(".md")
