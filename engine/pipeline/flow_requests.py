"""The requests of a flow (an action made of named, dependent steps), built from what is known.

A step reads the mapped ``document``, the ``traits``, the row's ``values``,
the ``settings`` and the answers of the steps before it (``steps.<name>``:
``{status, headers, body}``). Delivery builds each step here once the
earlier answers are in; a dry run builds the leading steps that need no
answer, so it shows what would go first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import outcome as oc
from ..envelope import HttpRequest
from ..language.expressions import ExpressionError, ExpressionLimitError
from ..language.model import ActionSpec, FlowStep
from ..language.templates import TemplateError


class StepBuildError(Exception):
    """A step's request could not be built (a preset bug, or a limit); ``cause`` is the outcome's cause."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


def step_context(
    document: Any,
    traits: Mapping[str, Any],
    values: Mapping[str, Any],
    settings: Mapping[str, Any],
    steps: Mapping[str, Any],
) -> dict[str, Any]:
    """What a step's expressions and templates see."""
    return {"document": document, "traits": traits, "values": values, "settings": settings, "steps": dict(steps)}


def step_runs(action: ActionSpec, step: FlowStep, context: Mapping[str, Any]) -> bool:
    """Whether the step is sent: no ``when``, or a ``when`` that gives true."""
    if step.when is None:
        return True
    try:
        return step.when.evaluate(context) is True
    except ExpressionError as exc:
        raise StepBuildError(_cause(exc), f"actions.{action.name}.flow.{step.name}.when: {exc}") from None


def step_request(action: ActionSpec, step: FlowStep, context: Mapping[str, Any]) -> HttpRequest:
    """The step's request for ``context``."""
    where = f"actions.{action.name}.flow.{step.name}"
    try:
        body = step.body.evaluate(context) if step.body is not None else None
    except ExpressionError as exc:
        raise StepBuildError(_cause(exc), f"{where}.body: {exc}") from None
    try:
        url = step.request.url.render(context)
        headers = {name: value.render(context, encode=False) for name, value in step.request.headers.items()}
    except TemplateError as exc:
        raise StepBuildError(oc.FLOW_ERROR, f"{where}.request: {exc}") from None
    if body is not None and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"  # the body is sent as JSON
    return HttpRequest(step.request.method, url, headers, body=body)


def leading_requests(action: ActionSpec, context: Mapping[str, Any]) -> list[HttpRequest]:
    """The steps a dry run can show: in order, until the first that needs an earlier step's answer."""
    requests = []
    for step in action.flow:
        if step.reads_steps:
            break
        if step_runs(action, step, context):
            requests.append(step_request(action, step, context))
    return requests


def _cause(exc: ExpressionError) -> str:
    return oc.EXPRESSION_LIMIT if isinstance(exc, ExpressionLimitError) else oc.FLOW_ERROR
