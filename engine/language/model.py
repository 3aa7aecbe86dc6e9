"""The preset model: what a compiled preset is made of.

Plain frozen dataclasses holding what the YAML said, checked and compiled
where the language itself compiles it (expressions, templates): the events
keyed for a dict lookup, the response rules as data. compile/ builds the
model from the YAML; the stages read it and hold the behaviour (matching an
answer to a rule is :mod:`engine.delivery.response_rules`). An output contract is a
schema file loaded into validators: the model names it by the interface its
readers use (:class:`Contract`), and compile/ puts the pipeline's contract
there. So this module imports nothing above the language, even for typing,
and the stages never depend on YAML, JSON Schema or error reporting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any, Protocol

from .expressions import DEFAULT_LIMITS, ExpressionLimits
from .records import record

if TYPE_CHECKING:
    from .expressions import Expression
    from .settings import SettingSpec
    from .templates import Template

# Defaults of the preset language (documented in schemas/preset.schema.json and docs/concepts/preset-language.md).
DEFAULT_IDENTITY_TTL_DAYS = 90
DEFAULT_IDENTITY_MAX_BYTES = 512 * 1024 * 1024  # about 1.3 million ids at 400 bytes each
DEFAULT_MAX_TRAIT_BYTES = 2048
DEFAULT_DEDUPE_WINDOW_SECONDS = 86400


class Contract(Protocol):
    """An action's output contract, as the model's readers use it (:class:`engine.pipeline.output_contract.OutputContract`).

    compile/ loads the schema file and puts the contract here; the transform shapes and checks each
    document with it, and the compiler asks it which literal keys the schema forbids.
    """

    @property
    def name(self) -> str: ...

    def shape(self, value: Any, *, omit_empty: bool, truncate: bool) -> Any: ...

    def truncate(self, value: Any) -> Any: ...

    def check(self, document: Any) -> None: ...

    def forbidden_key(self, path: tuple[str, ...], key: str) -> list[str] | None: ...


@record
class EventRoute:
    """Where a taken event goes: the action to run and its per-event values."""

    name: str
    action: str
    values: Mapping[str, Any] = field(default_factory=dict)


@record
class EventsSpec:
    """``events:``, keyed so that the first filter is one dict lookup; drops are left out.

    Most traffic is anonymous page views that every preset drops, so
    routing runs before anything else and costs one hash lookup per event.
    """

    track: Mapping[str, EventRoute]  # track name or alias -> route
    by_type: Mapping[str, EventRoute]  # non-track type -> route

    def route(self, event_type: str, name: str | None) -> EventRoute | None:
        if event_type == "track":
            return self.track.get(name) if name is not None else None
        return self.by_type.get(event_type)


@record
class RuleSpec:
    """One response rule: what it matches and what it means (:mod:`engine.delivery.response_rules` matches it).

    From ``delivery.responses``, ``auth.errors`` or a flow step's ``responses``.
    """

    then: str
    message: str | None
    statuses: tuple[int | str, ...] = ()
    errors: tuple[str, ...] = ()
    detail_contains: str | None = None  # lower-cased
    match: Expression | None = None
    steps: tuple[str, ...] = ()  # create | lookup | update; empty: every step


@record
class TraitSpec:
    name: str
    normalise: Callable[..., Any] | None
    option: str | None  # e.g. region_from for phone_e164
    kind: str | None = None  # the normaliser's name in the preset


@record
class IdentitySpec:
    required: str
    traits: tuple[TraitSpec, ...]
    remember: tuple[str, ...]
    ttl_days: float = DEFAULT_IDENTITY_TTL_DAYS
    max_bytes: int = DEFAULT_IDENTITY_MAX_BYTES
    max_trait_bytes: int = DEFAULT_MAX_TRAIT_BYTES


@record
class RequestSpec:
    method: str
    url: Template
    headers: Mapping[str, Template]


@record
class LookupSpec:
    """How an upsert finds the existing record: any method, a URL template, JSONata query and body."""

    method: str
    url: Template
    headers: Mapping[str, Template]
    query: Expression | None
    json_query: frozenset[str]  # parameters sent as a JSON string
    body: Expression | None


@record
class UpsertSpec:
    """``on_conflict``: create, and on a conflict find and update. ``lookup_first``: find, then update or create."""

    strategy: str
    lookup: LookupSpec | None
    found: Expression
    update: RequestSpec
    update_body: Expression
    key: Expression | None = None  # events with the same key are delivered one after the other
    update_output: OutputSpec | None = None  # the update's own contract, when it differs from the create's


@record
class OutputSpec:
    """How a document is made to fit its contract: omit empty values, cut strings, validate."""

    contract: Contract | None
    omit_empty: bool = True
    truncate: bool = True


@record
class FlowStep:
    """One request of a flow: sent when ``when`` holds, read by later steps as ``steps.<name>``."""

    name: str
    request: RequestSpec
    body: Expression | None  # JSONata over {document, traits, values, settings, steps}
    when: Expression | None = None  # the same input; a step whose when is not true is skipped
    rules: tuple[RuleSpec, ...] = ()  # its own response rules, read before delivery.responses
    reads_steps: bool = False  # needs an earlier step's answer (a dry run cannot build it)


@record
class BatchSpec:
    """``batch``: many events' documents in one request, each item's result mapped back to its event."""

    max_items: int
    max_wait_seconds: float
    body: Expression  # JSONata over {items, settings}: the request body for the items' documents
    item_error: Expression | None = None  # over {status, headers, body, item, index}: why this item failed


@record
class ActionSpec:
    name: str
    mapping: Expression
    request: RequestSpec  # a flow's first step
    contract: Contract | None
    omit_empty: bool
    truncate: bool
    upsert: UpsertSpec | None
    flow: tuple[FlowStep, ...] = ()  # an action that is a sequence of dependent requests
    batch: BatchSpec | None = None  # events sent many to a request


# auth.type -> the placeholder its header (or query) value template carries.
CREDENTIAL_PLACEHOLDER = {
    "bearer": "token",
    "api_key": "key",
    "basic": "credentials",
    "oauth2_refresh_token": "access_token",
    "oauth2_client_credentials": "access_token",
}


@record
class AuthSpec:
    """One ``auth:`` section. ``type`` picks the kind; the fields a kind does not use stay empty.

    ``value`` is the header (or query parameter) value with the credential's
    placeholder in it, so the masked view and the sent value come from one
    template and can never disagree.
    """

    type: str
    header: str | None = None  # the header or query parameter that carries the credential
    value: str = ""
    placement: str = "header"  # header | query
    credential_setting: str | None = None  # bearer token / API key
    username: Template | None = None  # basic
    password: Template | None = None  # basic
    token_url: Template | None = None  # oauth2
    client_id_setting: str | None = None
    client_secret_setting: str | None = None
    refresh_token_setting: str | None = None
    client_auth: str = "form"  # form | basic
    rotates_refresh_token: bool = True
    scopes: tuple[str, ...] = ()
    authorize_url: Template | None = None
    echo_redirect_params: tuple[str, ...] = ()  # sent back with the authorization code (signal-engine auth)
    refresh_before_expiry: float = 60.0
    rules: tuple[RuleSpec, ...] = ()
    # Fields of the token answer that templates read as {token.NAME} (Salesforce's instance_url,
    # Zoho's api_domain); never a token itself. Kept with the access token.
    token_values: tuple[str, ...] = ()

    @property
    def placeholder(self) -> str:
        return "{" + CREDENTIAL_PLACEHOLDER.get(self.type, "credential") + "}"

    def render(self, credential: str) -> str:
        return self.value.replace(self.placeholder, credential)

    @property
    def is_oauth2(self) -> bool:
        return self.type.startswith("oauth2_")


@record
class RetrySpec:
    max_attempts: int
    initial_seconds: float
    multiplier: float
    max_seconds: float
    jitter: str


@record
class RateLimitSpec:
    requests: int
    per_seconds: float
    remaining_header: str | None
    reset_header: str | None
    retry_after_header: str | None
    reset_format: str = "epoch_seconds"  # epoch_seconds | epoch_milliseconds | delta_seconds | http_date
    window_header: str | None = None  # a window-length header, for destinations that send no reset
    window_unit: str = "seconds"
    wait_from_response: Expression | None = None  # JSONata over {status, headers, body} of a 429
    remaining_key: str | None = None  # read one key=value item of a structured header
    reset_key: str | None = None
    window_seconds: float | None = None  # a known window length, for destinations advertising no reset
    window_alignment: str = "rolling"  # clock | rolling
    # Further windows (rate_limit.windows: a daily budget beside a burst limit), each with its
    # own figures and headers; a request waits until every one of them lets it go.
    windows: tuple[RateLimitSpec, ...] = ()


@record
class DeliverySpec:
    timeout_seconds: float
    concurrency: int
    rate_limit: RateLimitSpec
    retries: RetrySpec
    rules: tuple[RuleSpec, ...]
    max_response_bytes: int = 1_048_576  # a longer answer is an error, not a memory spike
    # The same event (messageId, or the event's hash) is not delivered twice within this window.
    dedupe_window_seconds: float = DEFAULT_DEDUPE_WINDOW_SECONDS
    # delivery.order_by: events whose expression gives the same key (usually the email) are delivered one
    # after the other, for every action; an action's upsert.key takes its place for that action.
    order_by: Expression | None = None


@record
class Preset:
    name: str
    path: str
    metadata: Mapping[str, Any]
    settings: Mapping[str, SettingSpec]
    identity: IdentitySpec
    consent_setting: str
    consent_aliases: Mapping[str, list[str]]
    events: EventsSpec
    actions: Mapping[str, ActionSpec]
    auth: AuthSpec | None
    delivery: DeliverySpec
    raw: Mapping[str, Any] = field(repr=False)
    # ``limits.expression``: the bounds every expression of the preset was compiled with.
    expression_limits: ExpressionLimits = DEFAULT_LIMITS
