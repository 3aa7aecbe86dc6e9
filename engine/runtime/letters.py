"""A dead letter back into a request: what a replay needs, and whether it may be sent from here.

A letter keeps the masked request and the context the upsert's and the
flow's expressions read (the traits, the values, a flow's document and the
answers of the steps done). Rebuilding it checks the origin against the
settings of now, so the live credential never goes anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from ..language.model import Preset
from ..language.settings import Settings
from ..language.templates import TemplateError
from ..pipeline.prepare import Pipeline, Prepared
from ..redaction import Redactor


def letter_context(prepared: Prepared, redactor: Redactor) -> dict[str, Any]:
    """What a replay needs besides the request: the traits and values the upsert's expressions read.

    Both come from the event and the preset, never from the settings;
    any known secret that an event carried anyway is scrubbed like the
    request beside it.
    """
    context: dict[str, Any] = {"traits": prepared.traits, "values": prepared.values}
    if prepared.action.flow:
        # A flow also needs its document (the request is its first step's) and the answers of the
        # steps already delivered, so that a replay resumes after them.
        context.update(document=prepared.document, steps_done=prepared.steps_done)
    return redactor.redact(context)


def prepared_from_letter(
    entry: Mapping[str, Any], preset: Preset, settings: Settings, pipeline: Pipeline
) -> Prepared | str:
    """The request to re-send, or why this letter cannot be replayed here."""
    request = entry.get("request")
    action = preset.actions.get(str(entry.get("action")))
    if not isinstance(request, dict) or action is None:
        return f"dead letter {entry.get('id')} has no request or names an unknown action; left in the store"
    # A letter written before it kept its context replays with none, as it always did.
    context = found if isinstance(found := entry.get("context"), dict) else {}
    traits, values = context.get("traits"), context.get("values")
    traits = dict(traits) if isinstance(traits, dict) else {}
    values = dict(values) if isinstance(values, dict) else {}
    # The live credential goes only to the origin the settings name now.
    try:
        expected = _origin(
            action.request.url.render(
                {"settings": settings.public(), "traits": traits, "values": values, "document": context.get("document")}
            )
        )
    except TemplateError as exc:
        return f"its first request's URL cannot be built from the letter ({exc}); left in the store"
    recorded = _origin(str(request.get("url")))
    if recorded != expected:
        return f"recorded for {recorded}, but the settings now send to {expected}; left in the store"
    auth = preset.auth
    headers = {
        k: v
        for k, v in (request.get("headers") or {}).items()
        if not (auth and auth.placement == "header" and auth.header and k.lower() == auth.header.lower())
    }
    url = str(request.get("url"))
    if auth and auth.placement == "query" and auth.header:
        url = _without_query_param(url, auth.header)  # the masked key; the live one is applied on send
    if request.get("body") is not None:
        headers.setdefault(
            "Content-Type", pipeline.request_headers(action.name).get("Content-Type", "application/json")
        )
    done = context.get("steps_done")
    return Prepared(
        entry.get("index"),
        entry.get("messageId"),
        action,
        str(request.get("method")),
        url,
        headers,
        request.get("body"),
        traits,
        values,
        document=context.get("document") if action.flow else None,
        steps_done=dict(done) if isinstance(done, dict) and action.flow else {},
    )


def _without_query_param(url: str, name: str) -> str:
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    return urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote, safe="")))


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()
    except ValueError:
        return ""
