"""Signal engine: declarative event delivery.

A preset (YAML + JSONata) compiles into a filter → transform → deliver
pipeline. Import :class:`Engine` to embed delivery in an async host, or
:func:`load_preset` and :class:`Pipeline` for pure, network-free decisions.
"""

from .language.compiler import PresetError, load_preset
from .language.model import Preset
from .outcome import Outcome
from .pipeline.prepare import Pipeline, Prepared

__all__ = ["Engine", "Outcome", "Pipeline", "Prepared", "Preset", "PresetError", "load_preset"]


def __getattr__(name: str):  # noqa: ANN202 - lazy, so checks and dry runs never import aiohttp
    if name == "Engine":
        from .runtime import Engine

        return Engine
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
