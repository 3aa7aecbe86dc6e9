"""Signal engine: declarative event delivery.

A preset (YAML + JSONata) compiles into a filter → transform → deliver
pipeline. Import :class:`Engine` to embed delivery in an async host, or
:func:`load_preset` and :class:`Pipeline` for pure, network-free decisions::

    from engine import Engine, Pipeline, load_preset, resolve_settings, SettingsError, Outcome
"""

import sys
from typing import Any

from .compile.compiler import PresetError, load_preset
from .language.model import Preset
from .language.settings import Settings, SettingsError, resolve_settings
from .loggers import package_logger
from .outcome import Outcome
from .pipeline.prepare import Pipeline, Prepared

# A library does not decide where its records go: without a host's
# configuration they are discarded, not printed by logging's last resort.
# Here only for a host that imported logging already (it may log below
# "engine" itself); otherwise the first logger of ours adds it (.loggers).
if "logging" in sys.modules:
    package_logger(__name__)

__all__ = [
    "Engine",
    "Outcome",
    "Pipeline",
    "Prepared",
    "Preset",
    "PresetError",
    "Settings",
    "SettingsError",
    "__version__",
    "load_preset",
    "resolve_settings",
]


def __getattr__(name: str) -> Any:  # lazy, so checks and dry runs never import aiohttp
    if name == "Engine":
        from .runtime import Engine

        return Engine
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def _version() -> str:
    """The installed package's version; read on demand (importlib.metadata costs ~20 ms to import)."""
    from importlib import metadata

    try:
        return metadata.version("signal-engine")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"
