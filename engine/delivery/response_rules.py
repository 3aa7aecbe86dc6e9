"""Response rules: what a status, a body or a transport failure means.

The meanings are the preset's (``delivery.responses`` and ``auth.errors``);
this module only matches. Rules are read in order and the first match
decides, like a firewall table, so a preset author can put a specific 422
before the general one.

Any body can be matched with ``match``, a JSONata predicate over
``{status, headers, body}``. ``error`` and ``detail_contains`` are
shorthands for the two error shapes most APIs share: JSON:API
(``errors[].id`` / ``detail``, ``details``, ``title``) and OAuth 2
(``error`` / ``error_description``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..language.expressions import ExpressionError
from ..language.model import RuleSpec


@dataclass(frozen=True)
class Answer:
    """What came back from one attempt, reduced to what rules can match on."""

    status: int | None  # None for a transport failure
    error_ids: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()  # error details and titles, for detail_contains
    transport_error: str | None = None  # "timeout" | "connection"
    data: Mapping[str, Any] = field(default_factory=dict)  # {status, headers, body} for match predicates
    step: str | None = None  # create | lookup | update; None at the token endpoint

    @classmethod
    def from_body(
        cls, status: int, body: Any, headers: Mapping[str, str] | None = None, step: str | None = None
    ) -> Answer:
        ids: list[str] = []
        texts: list[str] = []
        if isinstance(body, Mapping):
            if isinstance(body.get("error"), str):  # OAuth (RFC 6749) shape
                ids.append(body["error"])
                if isinstance(body.get("error_description"), str):
                    texts.append(body["error_description"])
            errors = body.get("errors")
            for err in errors if isinstance(errors, list) else []:
                if not isinstance(err, Mapping):
                    continue
                if isinstance(err.get("id"), str):
                    ids.append(err["id"])
                for key in ("detail", "details", "title"):
                    if isinstance(err.get(key), str):
                        texts.append(err[key])
        data = {"status": status, "headers": {k.lower(): v for k, v in (headers or {}).items()}, "body": body}
        return cls(status, tuple(ids), tuple(texts), data=data, step=step)


def matches(rule: RuleSpec, answer: Answer) -> bool:
    if rule.steps and answer.step not in rule.steps:
        return False
    if rule.statuses:
        if answer.status is None or not any(_status_matches(p, answer.status) for p in rule.statuses):
            return False
    if rule.errors:
        pool = (answer.transport_error,) if answer.transport_error else answer.error_ids
        if not any(e in pool for e in rule.errors):
            return False
    elif answer.transport_error:
        return False  # a status-only rule never matches a failure with no status
    if rule.detail_contains is not None:
        if not any(rule.detail_contains in t.lower() for t in answer.texts):
            return False
    if rule.match is not None:
        if answer.transport_error:
            return False
        try:
            return rule.match.evaluate(answer.data) is True
        except ExpressionError:
            return False  # a predicate that cannot be evaluated on this body does not match it
    return True


def _status_matches(pattern: int | str, status: int) -> bool:
    if isinstance(pattern, int):
        return pattern == status
    return status // 100 == int(pattern[0])


def first_match(rules: Sequence[RuleSpec], answer: Answer) -> RuleSpec | None:
    return next((r for r in rules if matches(r, answer)), None)
