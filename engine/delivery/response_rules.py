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
from typing import Any

from ..language.expressions import ExpressionError
from ..language.model import RuleSpec


class Answer:
    """What came back from one attempt, reduced to what rules can match on.

    Every answer is matched, most by the first rule: what only some rules
    read (the error ids and texts, the lower-cased headers) is worked out
    when a rule first asks for it, once.
    """

    __slots__ = ("_data", "_errors", "body", "headers", "status", "step", "transport_error")

    def __init__(
        self,
        status: int | None,  # None for a transport failure
        body: Any = None,  # parsed JSON, the text of a body that is not JSON, or None
        headers: Mapping[str, str] | None = None,  # as received; names in any case
        transport_error: str | None = None,  # "timeout" | "connection"
        step: str | None = None,  # create | lookup | update; None at the token endpoint
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.transport_error = transport_error
        self.step = step
        self._data: Mapping[str, Any] | None = None
        self._errors: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    @classmethod
    def from_body(
        cls, status: int, body: Any, headers: Mapping[str, str] | None = None, step: str | None = None
    ) -> Answer:
        return cls(status, body, headers, None, step)

    def __repr__(self) -> str:
        return f"Answer(status={self.status!r}, transport_error={self.transport_error!r}, step={self.step!r})"

    @property
    def error_ids(self) -> tuple[str, ...]:
        """The error ids in the body: OAuth 2's ``error`` and JSON:API's ``errors[].id``, in that order."""
        return (self._errors or self._read_errors())[0]

    @property
    def texts(self) -> tuple[str, ...]:
        """The error details and titles in the body, for ``detail_contains``."""
        return (self._errors or self._read_errors())[1]

    def _read_errors(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        ids: list[str] = []
        texts: list[str] = []
        body = self.body
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
        self._errors = (tuple(ids), tuple(texts))
        return self._errors

    @property
    def data(self) -> Mapping[str, Any]:
        """``{status, headers, body}`` for match predicates (header names lower-cased); empty with no status."""
        if self._data is None:
            if self.status is None:
                self._data = {}
            else:
                headers = {k.lower(): v for k, v in (self.headers or {}).items()}
                self._data = {"status": self.status, "headers": headers, "body": self.body}
        return self._data

    def data_for(self, reads: frozenset[str] | None) -> Mapping[str, Any]:
        """:attr:`data`, or as much of it as a predicate that reads only the top-level fields ``reads``
        (None: any) can see: the headers are lower-cased only for one that reads them."""
        if reads is None or "headers" in reads or self._data is not None or self.status is None:
            return self.data
        return {"status": self.status, "body": self.body}


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
            return rule.match.evaluate(answer.data_for(rule.match.reads)) is True
        except ExpressionError:
            return False  # a predicate that cannot be evaluated on this body does not match it
    return True


def _status_matches(pattern: int | str, status: int) -> bool:
    if isinstance(pattern, int):
        return pattern == status
    return status // 100 == int(pattern[0])


def first_match(rules: Sequence[RuleSpec], answer: Answer) -> RuleSpec | None:
    return next((r for r in rules if matches(r, answer)), None)
