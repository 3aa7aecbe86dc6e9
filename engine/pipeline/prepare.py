"""A compiled preset: filter → transform, producing either a drop or a ready request.

This is the pure half of the engine. ``prepare`` never does I/O, so dry
runs, golden tests and delivery all go through exactly the same decisions.
Drops are decided from precompiled tables (event name, consent, required
identity) before any JSONata runs, because most traffic is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import outcome as oc
from ..envelope import HttpRequest, masked_view
from ..event_identity import message_id_of
from ..language.expressions import ExpressionError, ExpressionLimitError
from ..language.model import ActionSpec, AuthSpec, Preset
from ..language.settings import Settings, SettingsError, resolve
from ..language.templates import TemplateError
from ..outcome import Outcome
from .consent import ConsentGate
from .event_shape import shape_problem
from .flow_requests import StepBuildError, leading_requests, step_context, step_request
from .identity import IdentityMemory, merged_traits
from .lookup import LookupBuildError, lookup_request
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
    values: dict[str, Any] = field(default_factory=dict)  # the event row's values
    warnings: list[str] | None = None  # optional traits left out, and why
    # A flow: the mapped document (``body`` is then the first step's), and the answers of the steps
    # already delivered (filled as the flow goes; a replay resumes after them).
    document: Any = None
    steps_done: dict[str, Any] = field(default_factory=dict)

    def envelope(self) -> HttpRequest:
        return HttpRequest(self.method, self.url, dict(self.headers), body=self.body)

    def masked_request(self, auth: AuthSpec | None) -> dict[str, Any]:
        """The envelope a person may see: the credential replaced by the mask."""
        return masked_view(auth, self.envelope())


class Pipeline:
    """One preset compiled against one set of settings. Holds the identity memory; nothing global.

    Without ``memory``, identity is kept in memory for this pipeline's life
    (dry runs, golden cases); the Engine passes one backed by its state.
    """

    def __init__(
        self, preset: Preset, settings: Settings | Mapping[str, Any], memory: IdentityMemory | None = None
    ) -> None:
        if not isinstance(settings, Settings):
            # A plain mapping of values, as a host writes it: checked like a dry
            # run's (the pure half never needs credentials).
            settings = resolve(preset.settings, settings, require=False)
        self.preset = preset
        self.settings = settings
        self.public_settings = settings.public()
        ident = preset.identity
        self.memory = memory if memory is not None else IdentityMemory.for_preset(ident)
        categories = list(settings.get(preset.consent_setting) or [])
        if not categories:
            # An empty list would let every event through: fail closed, loudly.
            raise SettingsError(f"setting {preset.consent_setting!r} must name at least one consent category")
        self.gate = ConsentGate.build(categories, preset.consent_aliases)
        self._required = next(t for t in ident.traits if t.name == ident.required)
        self._request_parts = self._render_requests()
        # (action, has a body) -> the masked method, URL and headers of its requests, which only the
        # settings decide: masked once, not per event (flows' requests read the event and are not kept).
        self._masked_heads: dict[tuple[str, bool], tuple[str, str, dict[str, str]]] = {}

    def request_headers(self, action: str) -> dict[str, str]:
        return dict(self._request_parts[action][1]) if action in self._request_parts else {}

    def _render_requests(self) -> dict[str, tuple[str, dict[str, str]]]:
        """Each action's URL and headers: templates over settings only, so rendered once.

        A setting a template needs and the settings do not hold is a
        configuration error here, before any event, not a failure per event.
        """
        context = {"settings": self.public_settings}
        parts = {}
        for name, action in self.preset.actions.items():
            if action.flow:
                continue  # a flow's requests read the event too: built per event (flow_requests)
            where = f"actions.{name}.request"
            try:
                url = action.request.url.render(context)
                headers = {h: v.render(context, encode=False) for h, v in action.request.headers.items()}
            except TemplateError as exc:
                raise SettingsError(f"{where}: {exc}; give the setting in the settings file") from None
            parts[name] = (url, headers)
        return parts

    def prepare(self, event: Any, index: int | None = None) -> Prepared | Outcome:
        """The drop, failure or ready request for one event; never raises, so no event is lost."""
        try:
            return self._prepare(event, index)
        except Exception as exc:  # noqa: BLE001 - the safety net behind every specific check
            return Outcome(
                index,
                message_id_of(event),
                oc.FAILED,
                cause=oc.INTERNAL_ERROR,
                detail=f"could not process this event: {type(exc).__name__}",
            )

    def _prepare(self, event: Any, index: int | None) -> Prepared | Outcome:
        message_id = message_id_of(event)
        problem = shape_problem(event)
        if problem:
            return oc.dropped(index, message_id, oc.INVALID_EVENT, problem)
        kind = event["type"]
        refused = self.learn_identity(event) if kind == "identify" else []

        route = self.preset.events.route(kind, event.get("event"))
        if route is None:
            return oc.dropped(index, message_id, oc.EVENT_NOT_MAPPED, self._unmapped_detail(kind, event, refused))

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
            return oc.dropped(
                index, message_id, oc.NOT_IDENTIFIED, f"no '{spec.name}' trait on the event or remembered for its user"
            )

        notes: list[str] = []
        traits = normalise_traits(self.preset.identity.traits, raw, skip=spec.name, notes=notes)
        traits[spec.name] = key
        action = self.preset.actions[route.action]
        # What the mapping sees as $ (documented in docs/concepts/preset-language.md).
        mapping_input = {"event": event, "traits": traits, "values": route.values, "settings": self.public_settings}
        try:
            body = build_document(action, action.mapping, mapping_input, f"actions.{action.name}.mapping")
        except TransformError as exc:
            return Outcome(index, message_id, oc.FAILED, cause=exc.cause, detail=str(exc), warnings=notes or None)
        if action.flow:
            return self._first_step(index, message_id, action, body, traits, dict(route.values), notes)
        url, headers = self._request_parts[action.name]
        return Prepared(
            index,
            message_id,
            action,
            action.request.method,
            url,
            dict(headers),
            body,
            traits,
            dict(route.values),
            notes or None,
        )

    def _first_step(
        self,
        index: int | None,
        message_id: str | None,
        action: ActionSpec,
        document: Any,
        traits: dict[str, Any],
        values: dict[str, Any],
        notes: list[str],
    ) -> Prepared | Outcome:
        """A flow's event: its first step's request (it needs no answer), with the document kept beside it."""
        context = step_context(document, traits, values, self.public_settings, {})
        try:
            first = step_request(action, action.flow[0], context)
        except StepBuildError as exc:
            return Outcome(index, message_id, oc.FAILED, cause=exc.cause, detail=exc.message, warnings=notes or None)
        return Prepared(
            index,
            message_id,
            action,
            first.method,
            first.url,
            first.headers,
            first.body,
            traits,
            values,
            notes or None,
            document=document,
        )

    def _dry_run_batch(self, result: Prepared, request: dict[str, Any]) -> Outcome:
        """A batched event alone: the request it would go in, as a batch of one."""
        spec = result.action.batch
        assert spec is not None
        try:
            body = spec.body.evaluate({"items": [result.body], "settings": self.public_settings})
        except ExpressionError as exc:
            cause = oc.EXPRESSION_LIMIT if isinstance(exc, ExpressionLimitError) else oc.BATCH_ERROR
            return Outcome(
                result.index,
                result.message_id,
                oc.FAILED,
                cause=cause,
                detail=f"actions.{result.action.name}.batch.body: {exc}",
                warnings=result.warnings,
            )
        return Outcome(
            result.index, result.message_id, oc.WOULD_SEND, request={**request, "body": body}, warnings=result.warnings
        )

    def _dry_run_flow(self, result: Prepared, request: dict[str, Any]) -> Outcome:
        """The flow's leading steps, those that need no earlier answer; ``request`` is the first."""
        context = step_context(result.document, result.traits, result.values, self.public_settings, {})
        try:
            leading = leading_requests(result.action, context)
        except StepBuildError as exc:
            return Outcome(
                result.index,
                result.message_id,
                oc.FAILED,
                cause=exc.cause,
                detail=exc.message,
                request=request,
                warnings=result.warnings,
            )
        return Outcome(
            result.index,
            result.message_id,
            oc.WOULD_SEND,
            request=request,
            warnings=result.warnings,
            requests=[masked_view(self.preset.auth, r) for r in leading],
        )

    def _masked_request(self, result: Prepared, auth: AuthSpec | None) -> dict[str, Any]:
        """``result.masked_request(auth)``; the part the settings decide is masked once per action."""
        if result.action.flow:
            return result.masked_request(auth)
        key = (result.action.name, result.body is not None)
        head = self._masked_heads.get(key)
        if head is None or (head[0], head[1]) != (result.method, result.url):
            view = result.masked_request(auth)
            self._masked_heads[key] = (view["method"], view["url"], dict(view["headers"]))
            return view
        method, url, headers = head
        if result.body is None:
            return {"method": method, "url": url, "headers": dict(headers)}
        return {"method": method, "url": url, "headers": dict(headers), "body": result.body}

    def learn_identity(self, event: Mapping[str, Any]) -> list[str]:
        """Remember an identify's traits, or forget its ids when its consent refuses; the refused categories.

        ``prepare`` does this for every identify. An intake that writes
        identity before it answers (``serve --redis``) calls it alone, and
        sees a store's error instead of the safety net's outcome.
        """
        if not self.memory.keys:
            return []
        refused = self.gate.refused(event)
        if refused:
            self.memory.forget(event)
        else:
            self.memory.remember(event, merged_traits(event, {}))
        return refused

    def learn_identities(self, events: Sequence[Mapping[str, Any]]) -> None:
        """:meth:`learn_identity` for a request's identifies, in order, with their merges made together.

        The identifies between two that forget (consent refused) are
        remembered in one call to the store: two round trips to Redis for a
        request, not two for each identify.
        """
        if not self.memory.keys:
            return
        pending: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
        for event in events:
            if self.gate.refused(event):
                self.memory.remember_many(pending)
                pending = []
                self.memory.forget(event)
            else:
                pending.append((event, merged_traits(event, {})))
        self.memory.remember_many(pending)

    def _unmapped_detail(self, kind: str, event: Mapping[str, Any], refused: list[str]) -> str:
        if kind == "track":
            return f"track event {event['event']!r} is not in the preset's event table (defaults.action: drop)"
        if kind == "identify":
            if refused:
                return (
                    f"identify is not mapped; its consent refuses {', '.join(refused)}, so its traits are "
                    "not remembered and those remembered for this user are forgotten"
                )
            if not self.memory.keys:
                return "identify is not mapped, and this preset remembers no identify traits"
            return "identify is not mapped; its traits are remembered for this user's later events"
        return f"{kind} events are not mapped (defaults.action: drop)"

    def dry_run(self, event: Any, index: int | None = None) -> Outcome:
        """The outcome a delivery would start from: ``would_send`` with the masked envelope, or the drop."""
        result = self.prepare(event, index)
        if isinstance(result, Outcome):
            return result
        auth = self.preset.auth
        request = self._masked_request(result, auth)
        if result.action.flow:
            return self._dry_run_flow(result, request)
        if result.action.batch is not None:
            return self._dry_run_batch(result, request)
        upsert = result.action.upsert
        if upsert is None or upsert.strategy != "lookup_first" or upsert.lookup is None:
            return Outcome(index, result.message_id, oc.WOULD_SEND, request=request, warnings=result.warnings)
        # The lookup goes first; what follows depends on its answer.
        context = {
            "document": result.body,
            "traits": result.traits,
            "values": result.values,
            "settings": self.public_settings,
        }
        try:
            lookup = lookup_request(result.action, context, result.headers)
        except LookupBuildError as exc:
            return Outcome(
                index,
                result.message_id,
                oc.FAILED,
                cause=exc.cause,
                detail=exc.message,
                request=request,
                warnings=result.warnings,
            )
        return Outcome(
            index,
            result.message_id,
            oc.WOULD_SEND,
            request=request,
            warnings=result.warnings,
            requests=[masked_view(auth, lookup), request],
        )
