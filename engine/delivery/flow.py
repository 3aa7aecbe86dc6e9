"""Flows: an action made of named steps, sent in order, each able to read the answers before it.

A step is skipped when its ``when`` is not true; it is judged by its own
response rules, then the preset's. The event's outcome is the flow's: the
last step's answer when every step went through; otherwise the step that
failed is named, with the steps already delivered. Those are remembered on
the prepared event (``steps_done``), so a dead letter keeps them and a
replay resumes after them instead of sending them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import outcome as oc
from ..outcome import Outcome
from ..pipeline.flow_requests import StepBuildError, step_context, step_request, step_runs
from ..pipeline.prepare import Prepared
from .exchange import Sending


async def deliver_flow(
    sender: Sending, prepared: Prepared, attempts: list[int], settings: Mapping[str, Any]
) -> Outcome:
    action = prepared.action
    done = prepared.steps_done  # name -> answer {status, headers, body}, or None when skipped
    names = [step.name for step in action.flow]
    stale = [name for name in done if name not in names]
    if stale:
        return sender.failed(
            prepared,
            oc.NOT_REPLAYABLE,
            f"the flow has no step {stale[0]!r} any more (the preset changed since this event "
            f"was kept): it cannot be resumed safely; left for a person to decide",
            None,
            attempts[0],
        )
    document = prepared.document if prepared.document is not None else prepared.body
    sent: list[dict[str, Any]] = []
    last = None
    for i, step in enumerate(action.flow):
        if step.name in done:
            continue  # delivered (or skipped) before this event was kept: not sent again
        answers = {name: answer for name, answer in done.items() if answer is not None}
        context = step_context(document, prepared.traits, prepared.values, settings, answers)
        try:
            if i > 0 and not step_runs(action, step, context):
                done[step.name] = None
                continue
            request = sender.first_request(prepared) if i == 0 else step_request(action, step, context)
        except StepBuildError as exc:
            result = sender.failed(
                prepared, exc.cause, f"flow step {step.name!r}: {exc.message}{_before(done)}", None, attempts[0]
            )
            result.requests = sent or None
            return result
        last = await sender.send(prepared, request, attempts, allow_upsert=False, step=step.name, rules=step.rules)
        if last.exchange is not None:
            sent.append(sender.view(last.exchange.request))
        if last.verdict != "deliver":
            result = sender.outcome(prepared, last, attempts[0], what=f"flow step {step.name!r}")
            result.detail = f"{result.detail or ''}{_before(done)}".strip() or None
            result.requests = sent
            return result
        response = last.exchange.response if last.exchange is not None else None
        done[step.name] = _kept(response.rule_input()) if response is not None else None
    skipped = [name for name, answer in done.items() if answer is None]
    detail = f"flow delivered: {', '.join(n for n in names if done.get(n) is not None)}" + (
        f" (skipped: {', '.join(skipped)})" if skipped else ""
    )
    if last is None:  # a replay whose remaining steps are all skipped now
        return Outcome(prepared.index, prepared.message_id, oc.DELIVERED, detail=detail, attempts=attempts[0])
    result = sender.outcome(prepared, last, attempts[0])
    result.detail = detail
    result.requests = sent
    return result


def _kept(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer as later steps (and a dead letter) keep it: a session cookie is no one's business."""
    headers = {name: value for name, value in answer["headers"].items() if name != "set-cookie"}
    return {**answer, "headers": headers}


def _before(done: Mapping[str, Any]) -> str:
    delivered = [name for name, answer in done.items() if answer is not None]
    return f" (delivered before it: {', '.join(delivered)}; a replay resumes after them)" if delivered else ""
