"""The package's long description: the README, readable where the package is published.

A package index shows the README without the repository around it, so a
link relative to the repository (``docs/guides/auth.md``) leads nowhere
there. setup.py's ``index_description`` makes each one readable; the metadata
a build really writes is checked here, not only the function.
"""

from __future__ import annotations

import email
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def setup_module_() -> ModuleType:
    spec = importlib.util.spec_from_file_location("signal_engine_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not as __main__: setup() is not called
    return module


def built_description(tmp_path: Path) -> email.message.Message:
    """The METADATA a wheel build writes (setuptools' own hook, run as pip runs it)."""
    code = (
        "import sys; from setuptools import build_meta; print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = proc.stdout.strip().splitlines()[-1]
    return email.message_from_string((tmp_path / name / "METADATA").read_text(encoding="utf-8"))


def test_the_built_description_has_no_link_a_package_index_cannot_follow(tmp_path: Path) -> None:
    metadata = built_description(tmp_path)
    assert metadata["Description-Content-Type"] == "text/markdown"
    body = metadata.get_payload()
    assert isinstance(body, str) and body.startswith("# Signal engine")
    relative = [target for _, target in LINK.findall(body) if not re.match(r"https?://|#", target)]
    assert not relative, f"links that lead nowhere on a package index: {relative}"
    # Every page the README links to is still named, and the note says where those files are.
    for _, target in LINK.findall(README):
        path = target.split("#", 1)[0]
        if path != "docs/index.md":
            assert f"`{path}`" in body, f"{path} is no longer named in the package's description"
    assert "files of the project's source" in body and "mkdocs serve" in body
    # The rest is the README's own text.
    assert "## Quick start" in body and README.splitlines()[-1] in body


def test_with_a_documentation_address_docs_pages_link_to_the_site() -> None:
    described = setup_module_().index_description(README, "https://docs.example.org/signal-engine/")
    targets = [target for _, target in LINK.findall(described)]
    assert "https://docs.example.org/signal-engine/guides/auth/" in targets
    assert "https://docs.example.org/signal-engine/concepts/" in targets  # docs/concepts/index.md
    assert "https://docs.example.org/signal-engine/" in targets  # docs/index.md
    assert all(target.startswith("https://") for target in targets)
    assert "> The documentation: <https://docs.example.org/signal-engine/>" in described


def test_anchors_and_absolute_links_are_kept() -> None:
    describe = setup_module_().index_description
    text = "# T\n\n[a](docs/guides/auth.md#oauth) [b](https://example.org/x) [c](#here) [d](LICENSE)\n"
    assert describe(text, "https://d.example/") == (
        "# T\n\n> The documentation: <https://d.example/>\n\n"
        "[a](https://d.example/guides/auth/#oauth) [b](https://example.org/x) [c](#here) d (`LICENSE`)\n"
    )
    assert describe("# T\n\nno links\n") == "# T\n\nno links\n"
