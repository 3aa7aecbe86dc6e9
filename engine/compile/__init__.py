"""Turns a preset's YAML into the model the stages run: above the pipeline and delivery, below the runtime.

The language (``engine.language``) says what a preset is; the stages
(``engine.pipeline``, ``engine.delivery``) run one. Compiling puts the
stages' pieces into the model (a trait's normaliser, an action's output
contract), which needs both, so it lives here, where no stage can import it back.
"""

from .compiler import PresetError, load_preset

__all__ = ["PresetError", "load_preset"]
