"""Packages are found, not listed: every package under engine/, plus the presets and schemas.

presets/ and schemas/ live at the repository top level (they are data that
preset authors edit) but ship inside the wheel as ``engine.presets`` and
``engine.schemas``, so that an installed engine works outside the
repository. pyproject.toml's ``find`` cannot give folders found elsewhere a
name under ``engine``; this file does that, and gives the package's long
description: the README, with the links a package index cannot follow made
readable there (``index_description``). Everything else is in
pyproject.toml. (The events ``signal-engine demo`` delivers live in
engine/examples/ already; they only need naming as data.)
"""

import re
import tomllib
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
DATA = {"presets": "*.yaml", "schemas": "*.json"}  # top-level folder -> the files it ships
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_ABSOLUTE = re.compile(r"[a-z][a-z0-9+.-]*:|#")  # a scheme (https:, mailto:) or an anchor of the same page


def index_description(readme: str, docs_url: str | None = None) -> str:
    """The README as a package index (PyPI) shows it.

    The README links to docs/ pages and other files relative to the
    repository: right on a forge and in an editor, but leading nowhere on a
    package index. With the docs site's address (``[project.urls]``
    ``Documentation`` in pyproject.toml) a docs/ page becomes its address on
    the site (MkDocs' ``page/`` form). A link that has no address there
    becomes its text with the path beside it, and a note under the title says
    where those files are.
    """

    def readable(match: re.Match[str]) -> str:
        text, target = match.groups()
        if _ABSOLUTE.match(target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        if docs_url and path.startswith("docs/") and path.endswith(".md"):
            page = path.removeprefix("docs/").removesuffix(".md")
            page = page.removesuffix("index") if page == "index" or page.endswith("/index") else page + "/"
            return f"[{text}]({docs_url.rstrip('/')}/{page}{'#' + anchor if anchor else ''})"
        if text.strip("`").rstrip("/") == path.split("/")[0]:
            return text  # [`docs/`](docs/index.md): the text names the path already
        return f"{text} (`{path}`)"

    unreachable = [m for m in _LINK.finditer(readme) if not _ABSOLUTE.match(m.group(2))]
    body = _LINK.sub(readable, readme)
    if docs_url:
        note = f"> The documentation: <{docs_url}>"
    elif unreachable:
        note = (
            "> The paths named below (`docs/…` and others) are files of the project's source. The "
            "documentation is its `docs/` folder, a MkDocs site: `pip install -e '.[docs]' && mkdocs serve` "
            "in a checkout serves it. The commands below are run in a checkout."
        )
    else:
        return body
    title, _, rest = body.partition("\n")
    return f"{title}\n\n{note}\n{rest}"


def _docs_url() -> str | None:
    project = tomllib.loads((HERE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    url = project.get("urls", {}).get("Documentation")
    return str(url) if url else None


def _packages() -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    packages = find_namespace_packages(include=["engine", "engine.*"], exclude=["*__pycache__*"])
    package_dir = {}
    package_data = {}
    for top, pattern in DATA.items():
        for name in [top, *(f"{top}.{sub}" for sub in find_namespace_packages(where=top, exclude=["*__pycache__*"]))]:
            packages.append(f"engine.{name}")
            package_data[f"engine.{name}"] = [pattern]
        package_dir[f"engine.{top}"] = top
    package_data["engine"] = ["py.typed"]
    package_data["engine.examples"] = ["*.ndjson"]  # the events of `signal-engine demo`
    package_data["engine.console"] = ["static/*.js", "static/*.css", "static/*.svg"]  # the console's own assets
    return packages, package_dir, package_data


if __name__ == "__main__":  # as setuptools runs it; tests/test_package_description.py imports it instead
    packages, package_dir, package_data = _packages()
    setup(
        packages=packages,
        package_dir=package_dir,
        package_data=package_data,
        long_description=index_description((HERE / "README.md").read_text(encoding="utf-8"), _docs_url()),
        long_description_content_type="text/markdown",
    )
