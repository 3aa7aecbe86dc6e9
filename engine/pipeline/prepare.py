"""A compiled preset: filter → transform, producing either a drop or a ready request.

This is the pure half of the engine. ``prepare`` never does I/O, so dry
runs, golden tests and delivery all go through exactly the same decisions.
Drops are decided from precompiled tables (event name, consent, required
identity) before any JSONata runs, because most traffic is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .. import outcome as oc
from ..language.model import ActionSpec, Preset
from ..language.settings import Settings, SettingsError
from ..language.templates import TemplateError
from ..outcome import Outcome
from ..redaction import MASK
from .consent import ConsentGate
from .event_shape import message_id_of, shape_problem
from .identity import IdentityMemory, merged_traits
from .normalisers import InvalidValue
from .transform import TransformError, build_document, normalise_traits


@dataclass
class Prepared:
    """An event that passed every filter, with its request built (auth header not yet applied)."""

    index: int | None
    message_id: str | None
    action: ActionSpec
    method: str
    url: str
    headers: dict[str, str]
    body: Any
    traits: dict[str, Any]

    def masked_request(self, auth_header: str | None, auth_value: str | None) -> dict[str, Any]:
        """The envelope a person may see: the credential replaced by the mask."""
        headers = dict(self.headers)
        if auth_header and auth_value:
            headers[auth_header] = auth_value.replace("{access_token}", MASK)
        return {"method": self.method, "url": self.url, "headers": headers, "body": self.body}


class Pipeline:
    """One preset compiled against one set of settings. Holds the identity memory; nothing global."""

    def __init__(self, preset: Preset, settings: Settings, memory: IdentityMemory | None = None) -> None:
        self.preset = preset
        self.settings = settings
        self.public_settings = settings.public()
        ident = preset.identity
        self.memory = memory if memory is not None else IdentityMemory(ident.remember, ident.memory_limit, [t.name for t in ident.traits])
        categories = list(settings.get(preset.consent_setting) or [])
        if not categories:
            # An empty list would let every event through: fail closed, loudly.
            raise SettingsError(f"setting {preset.consent_setting!r} must name at least one consent category")
        self.gate = ConsentGate.build(categories, preset.consent_aliases)
        self._required = next(t for t in ident.traits if t.name == ident.required)
        self._template_context = {"settings": self.public_settings}
        # Request URLs see only the settings, fixed for this pipeline: rendered once per action.
        self._urls: dict[str, str] = {}

    def prepare(self, event: Any, index: int | None = None) -> Prepared | Outcome:
        """The drop, failure or ready request for one event; never raises, so no event is lost."""
        try:
            return self._prepare(event, index)
        except Exception as exc:  # noqa: BLE001 - the safety net behind every specific check
            return Outcome(index, message_id_of(event), oc.FAILED, cause="internal_error",
                           detail=f"could not process this event: {type(exc).__name__}")

    def _prepare(self, event: Any, index: int | None) -> Prepared | Outcome:
        message_id = message_id_of(event)
        problem = shape_problem(event)
        if problem:
            return oc.dropped(index, message_id, oc.INVALID_EVENT, problem)
        kind = event["type"]
        if kind == "identify" and self.memory.keys:
            if self.gate.denied(event):
                self.memory.forget(event)
            else:
                self.memory.remember(event, merged_traits(event, {}))

        route = self.preset.events.route(kind, event.get("event"))
        if route is None:
            return oc.dropped(index, message_id, oc.EVENT_NOT_MAPPED, self._unmapped_detail(kind, event))

        missing = self.gate.missing(event)
        if missing:
            return oc.dropped(index, message_id, oc.NO_CONSENT, f"consent not granted for: {', '.join(missing)}")

        raw = merged_traits(event, self.memory.recall(event))
        spec = self._required
        try:
            key = spec.normalise(raw.get(spec.name), raw, spec.option) if spec.normalise else raw.get(spec.name)
        except InvalidValue as exc:
            # The drop reason follows the normaliser that refused the value.
            reason = oc.INVALID_EMAIL if spec.kind == "email" else oc.INVALID_EVENT
            return oc.dropped(index, message_id, reason, f"trait '{spec.name}': {exc}")
        if key is None:
            return oc.dropped(index, message_id, oc.NOT_IDENTIFIED, f"no '{spec.name}' trait on the event or remembered for its user")

        traits = normalise_traits(self.preset.identity.traits, raw, skip=spec.name)
        traits[spec.name] = key
        action = self.preset.actions[route.action]
        # What the mapping sees as $ (documented in the README's authoring guide).
        mapping_input = {"event": event, "traits": traits, "values": route.values, "settings": self.public_settings}
        try:
            body = build_document(action, action.mapping, mapping_input, f"actions.{action.name}.mapping")
            url = self._urls.get(action.name) or self._render_url(action)
        except TransformError as exc:
            return Outcome(index, message_id, oc.FAILED, cause=exc.cause, detail=str(exc))
        except TemplateError as exc:
            return Outcome(index, message_id, oc.FAILED, cause="template_error", detail=f"actions.{action.name}.request.url: {exc}")
        return Prepared(index, message_id, action, action.request.method, url, dict(action.request.headers), body, traits)

    def _render_url(self, action: ActionSpec) -> str:
        url = self._urls[action.name] = action.request.url.render(self._template_context)
        return url

    def _unmapped_detail(self, kind: str, event: Mapping[str, Any]) -> str:
        if kind == "track":
            return f"track event {event['event']!r} is not in the preset's event table (defaults.action: drop)"
        if kind == "identify":
            return "identify is not mapped; its traits are remembered for this user's later events"
        return f"{kind} events are not mapped (defaults.action: drop)"

    def dry_run(self, event: Any, index: int | None = None) -> Outcome:
        """The outcome a delivery would start from: ``would_send`` with the masked envelope, or the drop."""
        result = self.prepare(event, index)
        if isinstance(result, Outcome):
            return result
        auth = self.preset.auth
        request = result.masked_request(auth.header if auth else None, auth.value if auth else None)
        return Outcome(index, result.message_id, oc.WOULD_SEND, request=request)
