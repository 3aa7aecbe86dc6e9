"""The one place the engine touches a JSONata implementation.

Everything else sees :class:`Expression` (compile once, evaluate many) and
:class:`ExpressionError`. Keeping the engine behind this adapter is what lets a
faster JSONata engine be swapped in later: the golden suite then proves that
the output is identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonata
from jsonata.jexception import JException

# Bounds for one evaluation. Presets are data written by people; a runaway
# expression must not hang the host's event loop.
EVAL_TIMEOUT_MS = 2000
EVAL_MAX_DEPTH = 400


class ExpressionError(Exception):
    """A JSONata expression failed to compile or evaluate.

    ``position`` is where the implementation reports the error: the offset
    just past the offending token (so the token ends at ``position - 1``),
    which a loader turns into file:line:col.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class Expression:
    """A compiled JSONata expression.

    jsonata-python keeps its recursion-depth and timeout counters on the
    compiled object, so an expression evaluated many times would eventually
    trip them. Each evaluation therefore gets a fresh frame with fresh bounds,
    which also keeps evaluations from sharing bindings.
    """

    source: str
    _compiled: Any

    @classmethod
    def compile(cls, source: str) -> "Expression":
        try:
            compiled = jsonata.Jsonata(source)
        except JException as exc:
            raise ExpressionError(_message(exc), _position(exc)) from None
        except RecursionError:
            raise ExpressionError("expression is nested too deeply") from None
        if compiled.errors:
            first = compiled.errors[0]
            raise ExpressionError(_message(first), _position(first))
        # Inputs are parsed JSON (or host dicts checked by event_shape); the
        # engine's own walk over the whole input costs more than the mapping.
        compiled.set_validate_input(False)
        return cls(source, compiled)

    def evaluate(self, data: Any) -> Any:
        frame = self._compiled.create_frame(None)
        frame.set_runtime_bounds(EVAL_TIMEOUT_MS, EVAL_MAX_DEPTH)
        try:
            return self._compiled.evaluate(data, frame)
        except JException as exc:
            raise ExpressionError(_message(exc), _position(exc)) from None
        except RecursionError:
            raise ExpressionError("expression recursed too deeply") from None
        except (TypeError, ValueError, ArithmeticError, AttributeError, KeyError, IndexError) as exc:
            # The pure-Python engine lets some host errors through; report
            # them as expression failures rather than crashing the stream.
            raise ExpressionError(f"evaluation failed: {exc}") from None


def _position(exc: Exception) -> int | None:
    location = getattr(exc, "location", None)
    return location if isinstance(location, int) and location >= 0 else None


def _message(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
