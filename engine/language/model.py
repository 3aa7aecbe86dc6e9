"""The preset model: what a compiled preset is made of.

Plain frozen dataclasses holding the compiled stage objects (expressions,
templates, event table, output contract, rules). The stages import this
module, never the compiler that builds it, so the pure pipeline and the
delivery code do not depend on YAML, JSON Schema or error reporting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .expressions import DEFAULT_LIMITS, ExpressionLimits

if TYPE_CHECKING:  # types only: the stages below import this module
    from ..delivery.response_rules import Rule
    from ..pipeline.event_table import EventTable
    from ..pipeline.output_contract import OutputContract
    from .expressions import Expression
    from .settings import SettingSpec
    from .templates import Template


@dataclass(frozen=True)
class TraitSpec:
    name: str
    normalise: Callable[..., Any] | None
    option: str | None  # e.g. region_from for phone_e164
    kind: str | None = None  # the normaliser's name in the preset


@dataclass(frozen=True)
class IdentitySpec:
    required: str
    traits: tuple[TraitSpec, ...]
    remember: tuple[str, ...]
    memory_limit: int


@dataclass(frozen=True)
class RequestSpec:
    method: str
    url: Template
    headers: Mapping[str, str]


@dataclass(frozen=True)
class UpsertSpec:
    lookup_method: str
    lookup_url: Template
    lookup_query: Expression | None
    found: Expression
    update_method: str
    update_url: Template
    update_body: Expression


@dataclass(frozen=True)
class ActionSpec:
    name: str
    mapping: Expression
    request: RequestSpec
    contract: OutputContract | None
    omit_empty: bool
    truncate: bool
    upsert: UpsertSpec | None


@dataclass(frozen=True)
class AuthSpec:
    token_url: Template
    client_id_setting: str
    client_secret_setting: str
    refresh_token_setting: str
    rotates_refresh_token: bool
    header: str
    value: str
    refresh_before_expiry: float
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class RetrySpec:
    max_attempts: int
    initial_seconds: float
    multiplier: float
    max_seconds: float
    jitter: str


@dataclass(frozen=True)
class RateLimitSpec:
    requests: int
    per_seconds: float
    remaining_header: str | None
    reset_header: str | None
    retry_after_header: str | None


@dataclass(frozen=True)
class DeliverySpec:
    timeout_seconds: float
    concurrency: int
    rate_limit: RateLimitSpec
    retries: RetrySpec
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Preset:
    name: str
    path: str
    metadata: Mapping[str, Any]
    settings: Mapping[str, SettingSpec]
    identity: IdentitySpec
    consent_setting: str
    consent_aliases: Mapping[str, list[str]]
    events: EventTable
    actions: Mapping[str, ActionSpec]
    auth: AuthSpec | None
    delivery: DeliverySpec
    raw: Mapping[str, Any] = field(repr=False)
    # ``limits.expression``: the bounds every expression of the preset was compiled with.
    expression_limits: ExpressionLimits = DEFAULT_LIMITS
