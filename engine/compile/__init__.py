"""Turns a preset model into the stages that run it: above the pipeline and delivery, below the runtime.

The language (``engine.language``) says what a preset is; the stages
(``engine.pipeline``, ``engine.delivery``) run one. Building the stages from
the model needs both, so it lives here, where no stage can import it back.
"""

from .compiler import PresetError, load_preset

__all__ = ["PresetError", "load_preset"]
