"""An upsert's lookup request, built from the event alone: for delivery and for the dry run.

A ``lookup_first`` action sends its lookup before the create, and the
lookup reads only what the event gives (``document``, ``traits``,
``values``, ``settings``), so it can be built without I/O. Delivery builds
it here, and so does a dry run, which then shows the lookup that would go
first instead of only the create.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import outcome as oc
from ..envelope import HttpRequest
from ..language.expressions import ExpressionError, ExpressionLimitError
from ..language.model import ActionSpec
from ..language.templates import TemplateError


class LookupBuildError(Exception):
    """The lookup could not be built (a preset bug, or a limit); ``cause`` is the outcome's cause."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


def lookup_request(action: ActionSpec, context: Mapping[str, Any], headers: Mapping[str, str]) -> HttpRequest:
    """The lookup of ``action.upsert`` for ``context``; ``headers`` are the action's own (media types)."""
    spec = action.upsert.lookup if action.upsert is not None else None
    assert spec is not None
    where = f"actions.{action.name}.upsert.lookup"
    try:
        query = spec.query.evaluate(context) if spec.query else None
        body = spec.body.evaluate(context) if spec.body else None
    except ExpressionError as exc:
        cause = oc.EXPRESSION_LIMIT if isinstance(exc, ExpressionLimitError) else oc.UPSERT_ERROR
        raise LookupBuildError(cause, f"{where}: {exc}") from None
    if query is not None and not isinstance(query, dict):
        raise LookupBuildError(oc.UPSERT_ERROR, f"{where}.query must give an object of query parameters")
    try:
        params = encode_query(query or {}, spec.json_query)
    except ValueError as exc:
        raise LookupBuildError(oc.UPSERT_ERROR, f"{where}.query: {exc}") from None
    try:
        url = spec.url.render(context)
        sent = {**headers, **{name: value.render(context, encode=False) for name, value in spec.headers.items()}}
    except TemplateError as exc:
        raise LookupBuildError(oc.UPSERT_ERROR, f"{where}: {exc}") from None
    return HttpRequest(spec.method, url, sent, params, body)


def encode_query(params: Mapping[str, Any], json_params: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Query parameters as ordered pairs: arrays become repeated keys, declared ones become JSON.

    ``{"email_addresses[]": ["a", "b"]}`` → ``email_addresses[]=a&email_addresses[]=b``.
    """
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if key in json_params:
            pairs.append((key, json.dumps(value, separators=(",", ":"), ensure_ascii=False)))
            continue
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, (dict, list)):
                raise ValueError(f"parameter {key!r} holds an object; list it in json_query to send it as JSON")
            pairs.append((key, _scalar(item)))
    return pairs


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
