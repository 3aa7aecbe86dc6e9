"""One request's attempt and its verdict, and what a strategy may ask of the sender.

The sender carries out the response rules; the upsert strategies, flows and
batches decide which requests to send and read how each ended. Both sides
need the same small vocabulary (an ``Exchange``, a ``Step``) and the
strategies need the sender's surface, not its class: kept here, below both,
the sender can hold an upserter without the upserter importing the sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .. import outcome as oc
from ..language.model import DeliverySpec, RuleSpec
from ..outcome import Outcome
from ..pipeline.prepare import Prepared
from ..redaction import Redactor
from .auth import AuthFailure
from .response_rules import Answer
from .transport import HttpRequest, HttpResponse


@dataclass
class Exchange:
    """One HTTP attempt as the rules and the Event Debugger see it."""

    request: HttpRequest  # without the credential
    response: HttpResponse | None = None
    transport_error: str | None = None  # "timeout" | "connection"
    error_text: str | None = None

    step: str = "create"  # create | lookup | update, for rules that name a step

    def answer(self) -> Answer:
        if self.response is None:
            return Answer(None, transport_error=self.transport_error or oc.CONNECTION, step=self.step)
        return Answer.from_body(self.response.status, self.response.body, self.response.headers, self.step)

    @property
    def status(self) -> int | None:
        return self.response.status if self.response is not None else None

    def response_view(self) -> dict[str, Any]:
        if self.response is None:
            return {"error": self.transport_error, "message": self.error_text}
        return self.response.view()


@dataclass
class Step:
    """How one request ended under the rules: the verdict and the last exchange."""

    verdict: str  # deliver | upsert | fail | exhausted | auth | unauthorised
    exchange: Exchange | None
    rule: RuleSpec | None
    auth_error: AuthFailure | None = None
    tries: int = 0  # attempts of this one request (the outcome's attempts count the whole event)
    renewed: bool = False  # the credential was renewed before the last attempt


class Sending(Protocol):
    """The sender as the upsert strategies, flows and batches use it (``sender.Sender`` is the one)."""

    delivery: DeliverySpec
    redactor: Redactor

    def first_request(self, prepared: Prepared) -> HttpRequest: ...

    async def send(
        self,
        prepared: Prepared,
        request: HttpRequest,
        attempts: list[int],
        *,
        allow_upsert: bool,
        step: str = "create",
        rules: tuple[RuleSpec, ...] = (),
    ) -> Step: ...

    def outcome(self, prepared: Prepared, step: Step, attempts: int, *, what: str = "create") -> Outcome: ...

    def failed(
        self,
        prepared: Prepared,
        cause: str,
        detail: str,
        ex: Exchange | None,
        attempts: int,
        *,
        dead_letter: bool = False,
    ) -> Outcome: ...

    def view(self, request: HttpRequest) -> dict[str, Any]: ...
