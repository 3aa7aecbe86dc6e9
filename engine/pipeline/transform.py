"""Transform: normalised traits + per-event values → the destination document.

The mapping is the preset's JSONata; this module only feeds it, then makes
the result fit the output contract. Both steps are pure, which is what lets
the golden files pin every document without a network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import outcome as oc
from ..language.expressions import Expression, ExpressionError, ExpressionLimitError
from ..language.model import ActionSpec, TraitSpec
from .normalisers import InvalidValue, text
from .output_contract import ContractViolation, omit_empty


class TransformError(Exception):
    """The preset produced no usable document; ``cause`` is a stable code for outcomes."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def normalise_traits(
    specs: tuple[TraitSpec, ...], raw: Mapping[str, Any], skip: str | None = None, notes: list[str] | None = None
) -> dict[str, Any]:
    """Declared traits only, each through its normaliser.

    A trait its normaliser refuses is left out, not fatal (the lead is worth
    more than its phone number); when ``notes`` is given, each one left out
    is named there, so the outcome can say why a field is missing.
    """
    clean: dict[str, Any] = {}
    for spec in specs:
        name = spec.name
        if name == skip or name not in raw:
            continue
        value = raw[name]
        normalise = spec.normalise
        if normalise is text and type(value) is str:
            value = value.strip() or None  # text() on a string, most traits: without the call
        elif normalise is not None:
            try:
                value = normalise(value, raw, spec.option)
            except InvalidValue as exc:
                value = None
                if notes is not None:
                    notes.append(f"trait '{name}' left out: {exc}")
        if value is not None:
            clean[name] = value
    return clean


def build_document(action: ActionSpec, expression: Expression, context: Mapping[str, Any], where: str) -> Any:
    """Evaluate one of the action's expressions and shape the result to the action's contract."""
    try:
        document = expression.evaluate(context)
    except ExpressionLimitError as exc:
        raise TransformError(oc.EXPRESSION_LIMIT, f"{where}: stopped at limits.expression.{exc.limit}: {exc}") from None
    except ExpressionError as exc:
        raise TransformError(oc.MAPPING_ERROR, f"{where}: JSONata evaluation failed: {exc}") from None
    return shape(action, document, where)


def shape(action: ActionSpec, document: Any, where: str) -> Any:
    if action.contract is None:
        return omit_empty(document) if action.omit_empty else document
    # Omission and truncation in one walk, then validation.
    document = action.contract.shape(document, omit_empty=action.omit_empty, truncate=action.truncate)
    try:
        action.contract.check(document)
    except ContractViolation as exc:
        raise TransformError(
            oc.OUTPUT_INVALID,
            f"{where}: preset bug: the document breaks {action.contract.name} at {exc.field}: "
            f"{str(exc).split(': ', 1)[1][:200]}",
        ) from None
    return document
