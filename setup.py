"""Packages are found, not listed: every package under engine/, plus the presets and schemas.

presets/ and schemas/ live at the repository top level (they are data that
preset authors edit) but ship inside the wheel as ``engine.presets`` and
``engine.schemas``, so that an installed engine works outside the
repository. pyproject.toml's ``find`` cannot give folders found elsewhere a
name under ``engine``; this file does only that. Everything else is in
pyproject.toml. (The events ``signal-engine demo`` delivers live in
engine/examples/ already; they only need naming as data.)
"""

from setuptools import find_namespace_packages, setup

DATA = {"presets": "*.yaml", "schemas": "*.json"}  # top-level folder -> the files it ships

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

setup(packages=packages, package_dir=package_dir, package_data=package_data)
