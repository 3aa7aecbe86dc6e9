"""Response rules: what a status, error id or transport failure means.

The meanings are the preset's (``delivery.responses`` and ``auth.errors``);
this module only matches. Rules are read in order and the first match
decides, like a firewall table, so a preset author can put a specific 422
before the general one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

TRANSPORT_ERRORS = ("timeout", "connection")


@dataclass(frozen=True)
class Answer:
    """What came back from one attempt, reduced to what rules can match on."""

    status: int | None  # None for a transport failure
    error_ids: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()  # error details and titles, for detail_contains
    transport_error: str | None = None  # "timeout" | "connection"

    @classmethod
    def from_body(cls, status: int, body: Any) -> "Answer":
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
        return cls(status, tuple(ids), tuple(texts))


@dataclass(frozen=True)
class Rule:
    then: str
    message: str | None
    statuses: tuple[int | str, ...] = ()
    errors: tuple[str, ...] = ()
    detail_contains: str | None = None

    @classmethod
    def build(cls, spec: Mapping[str, Any]) -> "Rule":
        when = spec["when"]
        status = when.get("status")
        statuses = tuple(status if isinstance(status, list) else ([status] if status is not None else []))
        error = when.get("error")
        errors = tuple(error if isinstance(error, list) else ([error] if error is not None else []))
        detail = when.get("detail_contains")
        return cls(spec["then"], spec.get("message"), statuses, errors, detail.lower() if detail else None)

    def matches(self, answer: Answer) -> bool:
        if self.statuses:
            if answer.status is None or not any(_status_matches(p, answer.status) for p in self.statuses):
                return False
        if self.errors:
            pool = (answer.transport_error,) if answer.transport_error else answer.error_ids
            if not any(e in pool for e in self.errors):
                return False
        elif answer.transport_error:
            return False  # a status-only rule never matches a failure with no status
        if self.detail_contains is not None:
            if not any(self.detail_contains in t.lower() for t in answer.texts):
                return False
        return True


def _status_matches(pattern: int | str, status: int) -> bool:
    if isinstance(pattern, int):
        return pattern == status
    return status // 100 == int(pattern[0])


def first_match(rules: Sequence[Rule], answer: Answer) -> Rule | None:
    return next((r for r in rules if r.matches(answer)), None)


def build_rules(specs: Iterable[Mapping[str, Any]]) -> tuple[Rule, ...]:
    return tuple(Rule.build(s) for s in specs)
