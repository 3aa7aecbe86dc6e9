"""Upsert strategies: one record per person, however the destination dedupes.

* ``on_conflict``: create; when a response rule says ``then: upsert`` (a
  duplicate), find the existing record and update it. The conflict answer
  itself is visible to every step, so a destination that names the
  existing id in its conflict (a 409 body) needs no lookup at all.
* ``lookup_first``: search first; update what was found, or create. For
  destinations that accept duplicates, where a create never conflicts.

Each step's expressions see ``{document, traits, values, settings,
conflict, lookup, found}``: the mapped document, the answer to the conflicting
create and to the lookup (``{status, headers, body}``), and the record found.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .. import outcome as oc
from ..language.expressions import ExpressionError, ExpressionLimitError
from ..language.model import UpsertSpec
from ..language.settings import Settings
from ..language.templates import TemplateError
from ..outcome import Outcome
from ..pipeline.lookup import LookupBuildError, lookup_request
from ..pipeline.prepare import Prepared
from ..pipeline.transform import TransformError, build_document
from .exchange import Exchange, Sending, Step
from .flow import deliver_flow
from .transport import HttpRequest


class UpsertError(Exception):
    """A step could not be built (a preset bug) or found nothing; ``cause`` is the outcome's cause."""

    def __init__(self, cause: str, message: str, exchange: Exchange | None, *, dead_letter: bool = False) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message
        self.exchange = exchange
        self.dead_letter = dead_letter


class Upserter:
    """Runs an action's requests in the order its strategy says."""

    def __init__(self, sender: Sending, settings: Settings) -> None:
        self.sender = sender
        self.public = settings.public()
        self._keys = KeyedLocks()

    async def deliver(self, prepared: Prepared, attempts: list[int]) -> Outcome:
        key = self.order_key(prepared)
        async with self._keys.hold(key):
            try:
                return await self._deliver(prepared, attempts)
            except _StepEnded as ended:
                return ended.outcome

    def order_key(self, prepared: Prepared) -> str | None:
        """The record this event writes, when the preset names it: such events go one at a time.

        An upsert's own ``key`` names it for its action; ``delivery.order_by``
        for every action (a native upsert, a plain create) that has none.
        """
        spec = prepared.action.upsert
        expression = spec.key if spec is not None and spec.key is not None else self.sender.delivery.order_by
        if expression is None:
            return None
        context = {
            "document": prepared.body,
            "traits": prepared.traits,
            "values": prepared.values,
            "settings": self.public,
        }
        try:
            key = expression.evaluate(context)
        except ExpressionError:
            return None  # no key, no ordering: the upsert still merges
        return json.dumps(key, sort_keys=True, default=str) if key is not None else None

    async def _deliver(self, prepared: Prepared, attempts: list[int]) -> Outcome:
        if prepared.action.flow:
            return await deliver_flow(self.sender, prepared, attempts, self.public)
        spec = prepared.action.upsert
        context = {
            "document": prepared.body,
            "traits": prepared.traits,
            "values": prepared.values,
            "settings": self.public,
        }
        if spec is not None and spec.strategy == "lookup_first":
            found, lookup = await self._find(prepared, spec, context, attempts)
            if found is not None:
                return await self._update(prepared, spec, {**context, "found": found}, attempts, lookup, None)
        create = await self.sender.send(prepared, self.sender.first_request(prepared), attempts, allow_upsert=True)
        if create.verdict != "upsert":
            return self.sender.outcome(prepared, create, attempts[0])
        if spec is None:
            return self.sender.outcome(prepared, create, attempts[0])
        conflict = _answer(create.exchange)
        context = {**context, "conflict": conflict}
        found, lookup = await self._find(prepared, spec, context, attempts, conflict_step=create)
        if found is None:
            # Usually search lagging behind the create: keep it for a replay.
            raise UpsertError(
                oc.UPSERT_NOT_FOUND,
                "the destination reported a duplicate but the lookup found no existing record yet",
                lookup or create.exchange,
                dead_letter=True,
            )
        return await self._update(prepared, spec, {**context, "found": found}, attempts, lookup, create)

    async def _find(
        self,
        prepared: Prepared,
        spec: UpsertSpec,
        context: dict[str, Any],
        attempts: list[int],
        conflict_step: Step | None = None,
    ) -> tuple[dict[str, Any] | None, Exchange | None]:
        """The existing record (or None), and the lookup's exchange when there was one."""
        where = f"actions.{prepared.action.name}.upsert"
        lookup_exchange = conflict_step.exchange if conflict_step else None
        if spec.lookup is not None:
            request = self._lookup_request(prepared, spec, context, lookup_exchange)
            step = await self.sender.send(prepared, request, attempts, allow_upsert=False, step="lookup")
            if step.verdict != "deliver":
                raise _StepEnded(self.sender.outcome(prepared, step, attempts[0], what="lookup"))
            lookup_exchange = step.exchange
            context["lookup"] = _answer(step.exchange)
        try:
            found = spec.found.evaluate(context)
        except ExpressionError as exc:
            raise UpsertError(_expression_cause(exc), f"{where}.found: {exc}", lookup_exchange) from None
        return (found if isinstance(found, dict) and found else None), lookup_exchange

    def _lookup_request(
        self, prepared: Prepared, spec: UpsertSpec, context: Mapping[str, Any], previous: Exchange | None
    ) -> HttpRequest:
        try:
            return lookup_request(prepared.action, context, prepared.headers)
        except LookupBuildError as exc:
            raise UpsertError(exc.cause, exc.message, previous) from None

    async def _update(
        self,
        prepared: Prepared,
        spec: UpsertSpec,
        context: dict[str, Any],
        attempts: list[int],
        lookup: Exchange | None,
        conflict: Step | None,
    ) -> Outcome:
        where = f"actions.{prepared.action.name}.upsert.update"
        previous = lookup or (conflict.exchange if conflict else None)
        action = prepared.action
        if spec.update_output is not None:  # the update's own contract
            out = spec.update_output
            action = dataclasses.replace(
                action, contract=out.contract, omit_empty=out.omit_empty, truncate=out.truncate
            )
        try:
            body = build_document(action, spec.update_body, context, f"{where}.body")
        except TransformError as exc:
            raise UpsertError(exc.cause, str(exc), previous) from None
        url, headers = self._render(where, spec.update, context, previous, prepared)
        step = await self.sender.send(
            prepared,
            HttpRequest(spec.update.method, url, headers, body=body),
            attempts,
            allow_upsert=False,
            step="update",
        )
        result = self.sender.outcome(prepared, step, attempts[0], what="update")
        if result.outcome == oc.DELIVERED:
            found = context["found"]
            ident = found.get("id") if isinstance(found, dict) else None
            if conflict is not None:
                merged = (
                    conflict.rule.message
                    if conflict.rule and conflict.rule.message
                    else "merged into the existing record"
                )
            else:
                merged = "updated the existing record found by the lookup"
            result.detail = f"{merged} (id {ident})" if ident is not None else merged
        return result

    def _render(
        self, where: str, spec: Any, context: Mapping[str, Any], previous: Exchange | None, prepared: Prepared
    ) -> tuple[str, dict[str, str]]:
        """URL and headers of a lookup or update: the action's headers (media types), then the step's own."""
        try:
            url = spec.url.render(context)
            headers = {
                **prepared.headers,
                **{name: value.render(context, encode=False) for name, value in spec.headers.items()},
            }
        except TemplateError as exc:
            raise UpsertError(oc.UPSERT_ERROR, f"{where}: {exc}", previous) from None
        return url, headers


class KeyedLocks:
    """One lock per key in use; a key's lock is dropped when its last holder leaves."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str | None) -> AsyncIterator[None]:
        if key is None:
            yield
            return
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class _StepEnded(Exception):
    """A lookup ended the event (it failed or was dead-lettered); carries that outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail or outcome.outcome)
        self.outcome = outcome


def _answer(exchange: Exchange | None) -> dict[str, Any] | None:
    if exchange is None or exchange.response is None:
        return None
    return exchange.response.rule_input()


def _expression_cause(exc: ExpressionError) -> str:
    """A limit that stopped an upsert expression is named as such; anything else is a preset bug."""
    return oc.EXPRESSION_LIMIT if isinstance(exc, ExpressionLimitError) else oc.UPSERT_ERROR
