"""A local fake of Outreach's OAuth token endpoint and prospects API.

The engine's Outreach destination has to survive behaviour that is awkward to
reproduce against the real service: refresh tokens that rotate on every use, a
throttle on minting access tokens, an hourly request quota, duplicate-email
rejections and flaky infrastructure.  This module imitates those behaviours on
loopback so integration tests and the sandbox demo (examples/sandbox-demo.sh) can exercise them on
purpose, deterministically and without credentials.

Behaviour follows Outreach's documentation and what production clients have
observed; where Outreach's behaviour is unconfirmed (unknown attributes, the
token throttle's error body), the sandbox picks the stricter reading so client
bugs show up locally rather than in production.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web

from ._authorization import (
    AuthorizationServer,
    add_authorize_arguments,
    authorize_handler,
    authorize_settings,
)
from ._tokens import (
    TokenIssuer,
    expire_tokens_handler,
    holds_valid_bearer,
    oauth_error,
    read_token_params,
    token_response,
)
from .common import (
    DEFAULT,
    Admission,
    EmailIndex,
    Fault,
    FaultedState,
    FixedWindowQuota,
    SandboxDemo,
    SandboxError,
    add_fault_arguments,
    api_middleware,
    create_sandbox_app,
    drop_connection,
    fault_mix_arg,
    fault_settings,
    fault_view,
    garbage_response,
    guarded,
    iso_millis,
    json_body,
    json_response,
    parse_fault,
    parse_fault_mix,
    requests_by_status,
    run_sandbox,
    sandbox_parser,
    start_app,
)

SUMMARY = (
    "Outreach: OAuth token endpoint with rotating refresh tokens (and the authorize step), prospects "
    "create/search/update, rate limits and injected faults"
)

__all__ = [
    "STATE_KEY",
    "SandboxConfig",
    "SandboxState",
    "create_app",
    "demo",
    "main",
    "start_sandbox",
]

JSONAPI_MEDIA_TYPE = "application/vnd.api+json"
GRANTED_SCOPE = "prospects.read prospects.write"
DUPLICATE_EMAIL_DETAIL = "Contacts email hash has already been taken."
DEFAULT_SCHEMA_PATH = Path("schemas/outreach/prospect-request.schema.json")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
SUPPORTED_FILTERS = frozenset({"emails"})


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


@dataclass
class SandboxConfig:
    """Knobs for the sandbox; defaults mirror Outreach's documented limits.

    ``token_ttl`` matches the 7200 s ``expires_in`` Outreach returns, the mint
    throttle matches the observed "about one access token per minute", and the
    quota matches the documented 10,000 requests per hour.  ``faults`` is a
    queue of one-shot failures (``500``, ``"drop"``, ``"delay:2"``...) applied to
    the first ``/api/v2`` requests, and ``fault_rate``/``fault_seed`` add
    reproducible random failures on top; ``fault_mix`` (``"garbage=0.2,
    429=0.05"``) draws those faults at those rates instead. For
    ``token_outage_seconds`` after start the token endpoint fails (503, a
    garbage 200, a dropped connection, 500, in turn), as an identity provider
    does during an incident.

    The authorize endpoint answers for a person: ``consent`` is what they
    decide (``approve`` or ``deny``). ``redirect_uris`` are the app's
    registered redirect URIs (a loopback one matches any port, RFC 8252),
    ``scopes`` the scopes enabled for it, and ``code_ttl`` how long a code
    lives (Outreach: "expires within minutes").
    """

    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    refresh_token: str = "sandbox-refresh-token"
    token_ttl: int = 7200
    mint_limit: int = 1
    mint_window: float = 60.0
    quota: int = 10000
    window: float = 3600.0
    # "first_request": a window opens with the first request after the last one
    # closed; "clock": windows are aligned to multiples of ``window`` on the
    # clock (an hourly quota that resets on the hour). Which one Outreach uses
    # is not documented; both advertise their reset.
    window_alignment: str = "first_request"
    two_value_remaining: bool = True
    faults: list[int | str] = field(default_factory=list)
    fault_rate: float = 0.0
    fault_seed: int | None = None
    fault_mix: str | Mapping[str, float] | None = None
    token_outage_seconds: float = 0.0
    schema_path: str | Path | None = None
    redirect_uris: list[str] = field(default_factory=lambda: ["http://127.0.0.1/callback"])
    scopes: list[str] = field(default_factory=lambda: GRANTED_SCOPE.split())
    consent: str = "approve"
    code_ttl: float = 600.0


# --------------------------------------------------------------------------
# Attribute rules (what Outreach's prospect schema allows)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeRule:
    """The JSON types and length limit Outreach declares for one attribute."""

    types: frozenset[str]
    max_length: int | None = None
    item_type: str | None = None


def _fallback_rules() -> dict[str, AttributeRule]:
    """The attributes the engine sends, used when no schema file is available."""
    text = frozenset({"string", "null"})
    array = frozenset({"array", "null"})
    rules = {
        name: AttributeRule(text, 255)
        for name in (
            "firstName",
            "lastName",
            "name",
            "title",
            "occupation",
            "addressCity",
            "addressState",
            "addressCountry",
        )
    }
    rules["company"] = AttributeRule(text, None)
    for name in ("emails", "mobilePhones", "tags"):
        rules[name] = AttributeRule(array, None, "string")
    return rules


def _default_schema_path() -> Path:
    """Find the project's prospect schema in a checkout or in an installed wheel.

    A checkout keeps ``schemas/`` beside the ``engine`` package; the wheel
    ships the same files as ``engine/schemas``.  The checkout path is returned
    when neither exists, and the caller then uses the built-in table.
    """
    package_dir = Path(__file__).resolve().parents[1]
    checkout = package_dir.parent / DEFAULT_SCHEMA_PATH
    installed = package_dir / DEFAULT_SCHEMA_PATH
    return installed if installed.is_file() and not checkout.is_file() else checkout


def _rule_from_schema(spec: Mapping[str, Any]) -> AttributeRule:
    """Keep a schema attribute's type and maxLength, and always allow null.

    Outreach declares every prospect attribute nullable; the project's schema
    may be tightened for what the engine sends, but the sandbox imitates what
    Outreach accepts, so extra constraints (non-null, minItems, required
    emails) are deliberately not enforced here.
    """
    declared = spec.get("type", [])
    types = frozenset([declared] if isinstance(declared, str) else declared)
    if types:
        types |= {"null"}
    items = spec.get("items") or {}
    item_type = items.get("type") if isinstance(items, Mapping) else None
    return AttributeRule(types, spec.get("maxLength"), item_type)


def load_attribute_rules(schema_path: str | Path | None) -> dict[str, AttributeRule]:
    """Read allowed prospect attributes from the reference JSON Schema.

    Only attribute names, JSON types and ``maxLength`` are taken from it.  An
    explicitly configured path must exist (a typo should fail loudly); the
    default path silently falls back to the built-in table so the sandbox
    still works from an installed wheel without the ``schemas`` directory.
    """
    path = Path(schema_path) if schema_path is not None else _default_schema_path()
    if schema_path is None and not path.is_file():
        return _fallback_rules()
    document = json.loads(path.read_text(encoding="utf-8"))
    attributes = document["properties"]["data"]["properties"]["attributes"]["properties"]
    return {name: _rule_from_schema(spec) for name, spec in attributes.items()}


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _type_matches(value: Any, types: Iterable[str]) -> bool:
    return any(_TYPE_CHECKS.get(name, lambda v: True)(value) for name in types)


def _attribute_problem(value: Any, rule: AttributeRule) -> str | None:
    """Explain why a value breaks its rule, or return None when it is fine."""
    kind = type(value)
    if kind is str:  # the usual attribute, checked without the general type table
        if "string" not in rule.types and rule.types and not _type_matches(value, rule.types):
            return f"must be of type {' or '.join(sorted(rule.types))}"
        if rule.max_length is not None and len(value) > rule.max_length:
            return f"is too long (maximum is {rule.max_length} characters)"
        return None
    if rule.types and not _type_matches(value, rule.types):
        return f"must be of type {' or '.join(sorted(rule.types))}"
    if isinstance(value, str) and rule.max_length is not None and len(value) > rule.max_length:
        return f"is too long (maximum is {rule.max_length} characters)"
    if isinstance(value, list) and rule.item_type is not None:
        if rule.item_type == "string" and all(type(item) is str for item in value):
            return None
        if not all(_type_matches(item, [rule.item_type]) for item in value):
            return f"must only contain values of type {rule.item_type}"
    return None


def validate_attributes(attributes: Mapping[str, Any], rules: Mapping[str, AttributeRule]) -> list[dict[str, Any]]:
    """Return JSON:API error objects for every attribute Outreach would reject.

    Whether Outreach rejects unknown attributes is unconfirmed; the sandbox
    rejects them so the engine never relies on them being ignored.
    """
    errors = []
    for name, value in attributes.items():
        rule = rules.get(name)
        problem = "is not a known prospect attribute" if rule is None else _attribute_problem(value, rule)
        if problem is not None:
            errors.append(_validation_error(f"{name} {problem}.", f"/data/attributes/{name}"))
    return errors


# --------------------------------------------------------------------------
# JSON:API error helpers
# --------------------------------------------------------------------------


class ApiError(SandboxError):
    """An error answer in Outreach's JSON:API error format."""

    def __init__(self, status: int, errors: list[dict[str, Any]], headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return _jsonapi_response({"errors": self.errors}, self.status, self.headers)


def _error(error_id: str, title: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": error_id, "title": title, "detail": detail}
    if pointer is not None:
        body["source"] = {"pointer": pointer}
    return body


def _validation_error(detail: str, pointer: str) -> dict[str, Any]:
    return _error("validationError", "Validation Error", detail, pointer)


def _not_found(detail: str) -> ApiError:
    return ApiError(404, [_error("resourceNotFound", "Resource Not Found", detail)])


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Server Error" if status >= 500 else "Client Error"


def _camel_id(status: int) -> str:
    """Build an Outreach-style error id such as ``internalServerError``."""
    words = _phrase(status).replace("-", " ").split()
    return words[0].lower() + "".join(word.capitalize() for word in words[1:])


def _jsonapi_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response(body, status=status, headers=headers, content_type=JSONAPI_MEDIA_TYPE)


# --------------------------------------------------------------------------
# Limits: mint throttle (the request quota is common.FixedWindowQuota)
# --------------------------------------------------------------------------


@dataclass
class MintThrottle:
    """The "about one access token per minute" limit seen on Outreach's token endpoint."""

    limit: int
    window: float
    recent: deque[float] = field(default_factory=deque)

    def _prune(self, now: float) -> None:
        while self.recent and now - self.recent[0] >= self.window:
            self.recent.popleft()

    def allows(self, now: float) -> bool:
        if self.limit <= 0:
            return True
        self._prune(now)
        return len(self.recent) < self.limit

    def record(self, now: float) -> None:
        self.recent.append(now)

    def seconds_until_free(self, now: float) -> int:
        if not self.recent:
            return 1
        return max(1, math.ceil(self.recent[0] + self.window - now))


# --------------------------------------------------------------------------
# Sandbox state
# --------------------------------------------------------------------------


class SandboxState(FaultedState, TokenIssuer):
    """Everything one sandbox instance remembers; lives on the aiohttp app.

    ``clock`` is wall-clock epoch seconds (Outreach's reset header is epoch
    based); in-process tests may replace it to move time without sleeping.
    """

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.rules = load_attribute_rules(config.schema_path)
        self.initial_faults = [parse_fault(spec) for spec in config.faults]
        self.initial_mix = parse_fault_mix(config.fault_mix) if config.fault_mix else []
        self._validate_numbers(config)
        self.reset()

    @staticmethod
    def _validate_numbers(config: SandboxConfig) -> None:
        if not 0.0 <= config.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        if config.quota < 0 or config.window <= 0 or config.mint_window <= 0 or config.token_ttl < 0:
            raise ValueError("quota and token_ttl must be >= 0; window and mint_window must be > 0")
        if not 0.0 <= config.token_outage_seconds < math.inf:
            raise ValueError("token_outage_seconds must be >= 0")

    def reset(self) -> None:
        """Forget everything, as if the sandbox had just started."""
        config = self.config
        self.refresh_tokens: set[str] = {config.refresh_token}
        self.access_tokens: dict[str, float] = {}
        self.next_expiry = math.inf  # the soonest an access token expires: nothing to forget before then
        self.origins: dict[tuple[str, str], str] = {}  # a request's scheme and Host: its origin, as yarl spells it
        self.prospects: dict[int, dict[str, Any]] = {}
        self.emails = EmailIndex()
        self.next_id = 1
        self.mints = 0
        self.creates = 0
        self.updates = 0
        self.statuses: list[int | str] = []
        self.token_statuses: list[int | str] = []
        self.reset_faults()
        self.fault_mix: list[tuple[Fault, float]] = list(self.initial_mix)
        self.token_outage_until = self.clock() + config.token_outage_seconds if config.token_outage_seconds else 0.0
        self.token_outage_answers = 0
        self.token_outage_requests = 0  # the next this many token requests fail, whatever the clock says
        self.in_flight = 0  # API requests being answered now
        self.quota = FixedWindowQuota(config.quota, config.window, aligned=config.window_alignment == "clock")
        self.throttle = MintThrottle(config.mint_limit, config.mint_window)
        self.authorization = AuthorizationServer(
            config.client_id, tuple(config.redirect_uris), tuple(config.scopes), config.consent, config.code_ttl
        )

    # -- tokens -----------------------------------------------------------

    def mint(self, old_refresh_token: str, now: float) -> tuple[str, str]:
        """Rotate the refresh token and issue a new access token."""
        self.refresh_tokens.discard(old_refresh_token)
        self.mints += 1
        return self.first_tokens(now)

    def first_tokens(self, now: float) -> tuple[str, str]:
        """The tokens an authorization code buys: a new chain. It counts against the mint throttle too."""
        self.throttle.record(now)
        return self.issue_tokens(now)

    def issue_tokens(self, now: float) -> tuple[str, str]:
        access_token, refresh_token = super().issue_tokens(now)
        self.next_expiry = min(self.next_expiry, self.access_tokens[access_token])
        return access_token, refresh_token

    def access_token_valid(self, token: str, now: float) -> bool:
        """Expired tokens are forgotten as they are met (looked through only once one may have expired)."""
        if now >= self.next_expiry:
            self.access_tokens = {t: exp for t, exp in self.access_tokens.items() if exp > now}
            self.next_expiry = min(self.access_tokens.values(), default=math.inf)
        return token in self.access_tokens

    # -- prospects --------------------------------------------------------

    def email_owner(self, emails: Iterable[Any], exclude_id: int | None = None) -> int | None:
        """Find a prospect already holding one of these emails (case-insensitive)."""
        holders = self.emails.holders({e.lower() for e in emails if isinstance(e, str)})
        holders.discard(exclude_id)
        return min(holders, default=None)

    def store(self, prospect_id: int, attributes: dict[str, Any]) -> None:
        """Add a prospect, keeping the email index in step."""
        self.prospects[prospect_id] = attributes
        self.emails.add(prospect_id, _lowered_emails(attributes))

    def change(self, prospect_id: int, stored: dict[str, Any], attributes: Mapping[str, Any]) -> None:
        """Apply sent attributes to a stored prospect, keeping the email index in step."""
        self.emails.drop(prospect_id, _lowered_emails(stored))
        stored.update(attributes)
        self.emails.add(prospect_id, _lowered_emails(stored))

    def snapshot(self) -> dict[str, Any]:
        """The admin view used by tests to assert on side effects."""
        return {
            "prospects": [{"id": pid, "attributes": attrs} for pid, attrs in sorted(self.prospects.items())],
            "mints": self.mints,
            "creates": self.creates,
            "updates": self.updates,
            "requests_by_status": requests_by_status(self.statuses),
            "statuses": list(self.statuses),
            "token_statuses": list(self.token_statuses),
            **fault_view(self),
            "fault_mix": {fault.describe(): share for fault, share in self.fault_mix},
            "token_outage_answers": self.token_outage_answers,
            "in_flight": self.in_flight,
            "refresh_tokens": sorted(self.refresh_tokens),
            "authorizations": self.authorization.issued,
            "code_exchanges": self.authorization.exchanged,
            "rate_limit": {
                "limit": self.quota.quota,
                "remaining": self.quota.remaining(),
                "reset": self.quota.reset_epoch(),
                "windows": [list(w) for w in self.quota.history],
            },
        }


def _lowered_emails(attributes: Mapping[str, Any]) -> set[str]:
    return {e.lower() for e in attributes.get("emails") or [] if isinstance(e, str)}


STATE_KEY = web.AppKey("outreach_sandbox_state", SandboxState)


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


# --------------------------------------------------------------------------
# OAuth token endpoint
# --------------------------------------------------------------------------


def _refresh(state: SandboxState, params: Mapping[str, Any], now: float) -> web.Response:
    """Apply Outreach's refresh rules in the order a client would trip over them."""
    config = state.config
    if params.get("client_id") != config.client_id or params.get("client_secret") != config.client_secret:
        return oauth_error(401, "invalid_client", "Client authentication failed.")
    if params.get("grant_type") == "authorization_code":
        return _exchange_code(state, params, now)
    if params.get("grant_type") != "refresh_token":
        return oauth_error(
            400, "unsupported_grant_type", "Only grant_type=refresh_token and authorization_code are supported."
        )
    old_token = params.get("refresh_token")
    if not isinstance(old_token, str) or old_token not in state.refresh_tokens:
        return oauth_error(400, "invalid_grant", "The refresh token is invalid, expired, revoked or already used.")
    if not state.throttle.allows(now):
        retry = str(state.throttle.seconds_until_free(now))
        return oauth_error(
            429,
            "too_many_requests",
            f"Access tokens are minted at most {config.mint_limit} per {config.mint_window:g} s.",
            {"Retry-After": retry},
        )
    access_token, refresh_token = state.mint(old_token, now)
    return token_response(access_token, refresh_token, config.token_ttl, GRANTED_SCOPE, now)


def _exchange_code(state: SandboxState, params: Mapping[str, Any], now: float) -> web.Response:
    """ "Step 2": the code from the redirect buys the first refresh and access tokens.

    The mint throttle counts this access token but never refuses the
    exchange: a person is waiting, and the code expires within minutes.
    """
    granted = state.authorization.redeem(params, now)
    if isinstance(granted, str):
        return oauth_error(400, "invalid_grant", granted)
    access_token, refresh_token = state.first_tokens(now)
    return token_response(access_token, refresh_token, state.config.token_ttl, granted.scope, now)


# What the token endpoint answers during an outage, in turn.
TOKEN_OUTAGE_FAULTS = (503, "garbage", "drop", 500)


def _token_outage(request: web.Request, state: SandboxState) -> web.Response | None:
    """During an outage, the next failure in turn (an error page, garbage, a dropped connection)."""
    if state.token_outage_requests > 0:
        state.token_outage_requests -= 1
    elif not state.token_outage_until or state.clock() >= state.token_outage_until:
        return None
    fault = TOKEN_OUTAGE_FAULTS[state.token_outage_answers % len(TOKEN_OUTAGE_FAULTS)]
    state.token_outage_answers += 1
    if fault == "drop":
        drop_connection(request)
        state.token_statuses.append("drop")
        return web.Response()  # written to a closed transport; nobody receives it
    response = (
        garbage_response()
        if fault == "garbage"
        else oauth_error(int(fault), "temporarily_unavailable", "The authorization server is unavailable.")
    )
    state.token_statuses.append(response.status)
    return response


async def token_endpoint(request: web.Request) -> web.Response:
    """``POST /oauth/token``: refresh with rotation, or exchange an authorization code, like Outreach."""
    state = _state(request)
    outage = _token_outage(request, state)
    if outage is not None:
        return outage
    params = await read_token_params(request)  # Outreach takes it as a form or as JSON
    response = _refresh(state, params, state.clock())
    state.token_statuses.append(response.status)
    return response


# --------------------------------------------------------------------------
# /api/v2 guards: auth, media type, body
# --------------------------------------------------------------------------


def _require_bearer(request: web.Request) -> None:
    """Reject requests without a current access token, as Outreach does with 401."""
    if holds_valid_bearer(request, _state(request)):
        return
    raise ApiError(401, [_error("unauthorized", "Unauthorized", "The access token is missing, invalid or expired.")])


def _require_jsonapi_media_type(request: web.Request) -> None:
    """Outreach answers 415 unless writes are sent as JSON:API."""
    if request.content_type == JSONAPI_MEDIA_TYPE:
        return
    detail = f"Content-Type must be {JSONAPI_MEDIA_TYPE}, got {request.content_type or 'none'}."
    raise ApiError(415, [{"id": "unsupportedMediaType", "title": "Unsupported Media Type", "details": detail}])


async def _read_document(request: web.Request) -> dict[str, Any]:
    _require_jsonapi_media_type(request)
    try:
        document = await json_body(request)
    except ValueError:
        raise ApiError(400, [_error("badRequest", "Bad Request", "The request body is not valid JSON.")]) from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        raise ApiError(422, [_validation_error("The document must have a data object.", "/data")])
    return document["data"]


def _prospect_attributes(data: Mapping[str, Any], rules: Mapping[str, AttributeRule]) -> dict[str, Any]:
    """Check the resource type and attributes of a prospect document."""
    if data.get("type") != "prospect":
        raise ApiError(422, [_validation_error("type must be 'prospect'.", "/data/type")])
    attributes = data.get("attributes", {})
    if not isinstance(attributes, dict):
        raise ApiError(422, [_validation_error("attributes must be an object.", "/data/attributes")])
    errors = validate_attributes(attributes, rules)
    if errors:
        raise ApiError(422, errors)
    return attributes


def _reject_duplicate_email(state: SandboxState, attributes: Mapping[str, Any], exclude_id: int | None) -> None:
    """Outreach's wording for an email that another prospect already has."""
    if state.email_owner(attributes.get("emails") or [], exclude_id) is not None:
        raise ApiError(422, [_validation_error(DUPLICATE_EMAIL_DETAIL, "/data")])


def _resource(request: web.Request, prospect_id: int, attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "prospect",
        "id": prospect_id,
        "attributes": dict(attributes),
        "links": {"self": f"{_origin(request)}/api/v2/prospects/{prospect_id}"},
    }


MAX_ORIGINS = 64


def _origin(request: web.Request) -> str:
    """``request.url.origin()``, kept per scheme and Host: building the URL anew was a tenth of a request."""
    origins = _state(request).origins
    key = (request.scheme, request.host)
    origin = origins.get(key)
    if origin is None:
        origin = str(request.url.origin())
        if len(origins) < MAX_ORIGINS:  # a client sending odd Host headers cannot grow it
            origins[key] = origin
    return origin


def _lookup(state: SandboxState, request: web.Request) -> tuple[int, dict[str, Any]]:
    prospect_id = int(request.match_info["id"])
    attributes = state.prospects.get(prospect_id)
    if attributes is None:
        raise _not_found(f"Could not find prospect with id {prospect_id}.")
    return prospect_id, attributes


# Wrap an API handler with the bearer check and JSON:API error rendering.
protected = guarded(_require_bearer)


# --------------------------------------------------------------------------
# Prospect handlers
# --------------------------------------------------------------------------


async def create_prospect(request: web.Request) -> web.Response:
    """``POST /api/v2/prospects``: no idempotency key, duplicates get a 422."""
    state = _state(request)
    attributes = _prospect_attributes(await _read_document(request), state.rules)
    _reject_duplicate_email(state, attributes, exclude_id=None)
    now = iso_millis(state.clock())
    prospect_id = state.next_id
    state.next_id += 1
    state.store(prospect_id, {**attributes, "createdAt": now, "updatedAt": now})
    state.creates += 1
    return _jsonapi_response({"data": _resource(request, prospect_id, state.prospects[prospect_id])}, 201)


def _page_size(request: web.Request) -> int:
    raw = request.query.get("page[size]", str(DEFAULT_PAGE_SIZE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ApiError(
            400,
            [
                {
                    **_error("badRequest", "Bad Request", f"page[size] must be an integer from 1 to {MAX_PAGE_SIZE}."),
                    "source": {"parameter": "page[size]"},
                }
            ],
        )
    return int(raw)


def _email_filter(request: web.Request) -> set[str] | None:
    """Read ``filter[emails]``; unknown filters are refused so typos surface."""
    for key in request.query:
        if key.startswith("filter[") and key[len("filter[") : -1] not in SUPPORTED_FILTERS:
            raise ApiError(
                400,
                [{**_error("badRequest", "Bad Request", f"Unsupported filter {key}."), "source": {"parameter": key}}],
            )
    raw = request.query.get("filter[emails]")
    if raw is None:
        return None
    return {part.strip().lower() for part in raw.split(",") if part.strip()}


async def list_prospects(request: web.Request) -> web.Response:
    """``GET /api/v2/prospects?filter[emails]=...``: the upsert look-up."""
    state = _state(request)
    size = _page_size(request)
    wanted = _email_filter(request)
    if wanted is None:
        matches = sorted(state.prospects.items())
    else:
        matches = [(pid, state.prospects[pid]) for pid in sorted(state.emails.holders(wanted))]
    data = [_resource(request, pid, attrs) for pid, attrs in matches[:size]]
    return _jsonapi_response({"data": data, "meta": {"count": len(matches)}}, 200)


async def get_prospect(request: web.Request) -> web.Response:
    """``GET /api/v2/prospects/{id}``."""
    state = _state(request)
    prospect_id, attributes = _lookup(state, request)
    return _jsonapi_response({"data": _resource(request, prospect_id, attributes)}, 200)


def _check_patch_id(data: Mapping[str, Any], prospect_id: int) -> None:
    """JSON:API requires the body id to name the resource in the URL."""
    body_id = data.get("id")
    if isinstance(body_id, bool) or str(body_id) != str(prospect_id):
        raise ApiError(422, [_validation_error(f"data.id must be {prospect_id}.", "/data/id")])


async def update_prospect(request: web.Request) -> web.Response:
    """``PATCH /api/v2/prospects/{id}``: sent attributes replace stored ones, arrays whole."""
    state = _state(request)
    prospect_id, stored = _lookup(state, request)
    data = await _read_document(request)
    _check_patch_id(data, prospect_id)
    attributes = _prospect_attributes(data, state.rules)
    _reject_duplicate_email(state, attributes, exclude_id=prospect_id)
    state.change(prospect_id, stored, attributes)
    stored["updatedAt"] = iso_millis(state.clock())
    state.updates += 1
    return _jsonapi_response({"data": _resource(request, prospect_id, stored)}, 200)


# --------------------------------------------------------------------------
# /api/v2 limits: the quota, rate-limit headers, the 429 and injected errors
# --------------------------------------------------------------------------


def _rate_limit_headers(state: SandboxState) -> dict[str, str]:
    """Outreach's three headers; Remaining may carry a second, wider bucket."""
    remaining = state.quota.remaining()
    value = str(remaining)
    if state.config.two_value_remaining:
        value = f"{remaining}, {max(0, 2 * state.quota.quota - state.quota.used)}"
    return {
        "X-RateLimit-Limit": str(state.quota.quota),
        "X-RateLimit-Remaining": value,
        "X-RateLimit-Reset": str(state.quota.reset_epoch()),
    }


def _quota_exceeded(state: SandboxState, now: float) -> web.Response:
    detail = f"You have exceeded your limit of {state.quota.quota} requests per {state.quota.window:g} s."
    headers = {"Retry-After": str(state.quota.seconds_to_reset(now))}
    return ApiError(429, [_error("rateLimitExceeded", "Rate Limit Exceeded", detail)], headers).response()


def _fault_response(state: SandboxState, status: int, now: float) -> web.Response:
    """An injected error page in Outreach's error format."""
    if status == 429:
        return _quota_exceeded(state, now)
    if status == 503:
        error = _error(
            "scheduledServerMaintenance",
            "Scheduled Server Maintenance",
            "The service is undergoing scheduled maintenance.",
        )
        return ApiError(503, [error], {"Retry-After": "1"}).response()
    return ApiError(status, [_error(_camel_id(status), _phrase(status), "Injected sandbox fault.")]).response()


def _route_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own 404/405 as JSON:API errors."""
    if exc.status == 404:
        return _not_found(f"No route for {request.path}.").response()
    return ApiError(exc.status, [_error(_camel_id(exc.status), exc.reason, exc.text or exc.reason)]).response()


def _admit(request: web.Request, state: SandboxState) -> Admission:
    """The request quota; an injected error is rendered at the moment it is given."""
    now = state.clock()
    return Admission(
        None if state.quota.consume(now) else _quota_exceeded(state, now),
        lambda status: _fault_response(state, status, state.clock()),
        lambda: _rate_limit_headers(state),
    )


# --------------------------------------------------------------------------
# Admin endpoints beyond the shared ones (no auth; for tests and demos only)
# --------------------------------------------------------------------------


async def admin_token_outage(request: web.Request) -> web.Response:
    """``POST /_sandbox/token-outage``: ``{"seconds": S}``, the token endpoint fails for the next S seconds;
    ``{"requests": N}``, it fails the next N token requests (whenever they come)."""
    state = _state(request)
    try:
        body = await request.json()
        if not isinstance(body, dict) or not ({"seconds", "requests"} & set(body)):
            raise ValueError
        seconds = float(body.get("seconds", 0))
        requests = body.get("requests", 0)
        if isinstance(requests, bool) or not isinstance(requests, int):
            raise ValueError
    except (ValueError, TypeError):
        seconds, requests = math.nan, 0
    if not 0.0 <= seconds < math.inf or requests < 0:
        return web.json_response({"error": 'send {"seconds": S} or {"requests": N}, S and N >= 0'}, status=400)
    if "seconds" in body:
        state.token_outage_until = state.clock() + seconds if seconds else 0.0
    if "requests" in body:
        state.token_outage_requests = requests
    return web.json_response(
        {"token_outage_until": state.token_outage_until, "token_outage_requests": state.token_outage_requests}
    )


# --------------------------------------------------------------------------
# App construction and serving
# --------------------------------------------------------------------------


def create_app(config: SandboxConfig) -> web.Application:
    """Build the sandbox app; all state lives on the app under ``STATE_KEY``.

    ``POST /_sandbox/reset`` goes back to the start-up state (the initial
    refresh token, no prospects).
    """
    api = api_middleware("/api/v2", _state, _admit, _route_error, log_requests=False, count_in_flight=True)
    app = create_sandbox_app(STATE_KEY, SandboxState(config), api)
    # where a person approves the app; answers as ``consent`` says
    app.router.add_get("/oauth/authorize", authorize_handler(_state))
    app.router.add_post("/oauth/token", token_endpoint)
    app.router.add_get("/api/v2/prospects", protected(list_prospects))
    app.router.add_post("/api/v2/prospects", protected(create_prospect))
    app.router.add_get(r"/api/v2/prospects/{id:\d+}", protected(get_prospect))
    app.router.add_patch(r"/api/v2/prospects/{id:\d+}", protected(update_prospect))
    app.router.add_post("/_sandbox/token-outage", admin_token_outage)
    app.router.add_post("/_sandbox/expire-tokens", expire_tokens_handler(_state))
    return app


async def start_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving in the running loop; port 0 picks a free port.

    Returns the runner (call ``await runner.cleanup()`` to stop) and the base
    URL, read back from the bound socket so the real port is reported.
    """
    return await start_app(create_app(config), host, port)


# --------------------------------------------------------------------------
# signal-engine demo
# --------------------------------------------------------------------------


DEMO_PRESET = "outreach/lead-capture"


def demo() -> SandboxDemo:
    """This sandbox with credentials of its own, and the lead-capture preset that delivers to it.

    The client secret and the refresh token are drawn afresh for every demo:
    a state directory kept from an earlier demo then holds a token chain
    that is simply not this one's (its rotated refresh token would be
    refused by the new sandbox), and no fixed credential is ever in play.
    """
    import secrets

    config = SandboxConfig(client_secret=secrets.token_urlsafe(24), refresh_token=secrets.token_urlsafe(32))
    app = create_app(config)
    state = app[STATE_KEY]

    def settings(base_url: str) -> dict[str, str]:
        return {
            "client_id": config.client_id,
            "client_secret": config.client_secret,
            "refresh_token": config.refresh_token,
            "base_url": base_url,
        }

    return SandboxDemo(DEMO_PRESET, app, settings, lambda: _demo_holdings(state), lambda: _demo_counts(state))


def _demo_counts(state: SandboxState) -> dict[str, Any]:
    return {
        "prospects": len(state.prospects),
        "created": state.creates,
        "merged": state.updates,
        "token_mints": state.mints,
        "requests_by_status": requests_by_status(state.statuses),
    }


def _demo_holdings(state: SandboxState) -> list[str]:
    counts = _demo_counts(state)
    statuses = ", ".join(f"{n} x {status}" for status, n in sorted(counts["requests_by_status"].items()))
    lines = [
        f"{counts['prospects']} prospect(s): {counts['created']} created, {counts['merged']} update(s) merged "
        f"into the prospect that already had the email (Outreach dedupes on email); "
        f"{counts['token_mints']} access token(s) minted; API answers: {statuses or 'none'}"
    ]
    for prospect_id, attributes in sorted(state.prospects.items()):
        emails = ", ".join(str(e) for e in attributes.get("emails") or [])
        tags = ", ".join(str(t) for t in attributes.get("tags") or [])
        lines.append(f"#{prospect_id} {emails}  {attributes.get('name') or ''}  tags: {tags}")
    return lines


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    defaults = SandboxConfig()
    parser = sandbox_parser(
        "outreach",
        8765,
        "Serve a local imitation of Outreach's OAuth token endpoint and prospects API: refresh-token rotation, a "
        "mint throttle, rate-limit headers and 429s, 415/401/422 errors, and injected faults. Point a preset's "
        "base_url setting at it (examples/sandbox-settings.yaml).",
    )
    parser.add_argument(
        "--quota", type=int, default=defaults.quota, help="API requests allowed per quota window" + DEFAULT
    )
    parser.add_argument("--window", type=float, default=defaults.window, help="quota window, in seconds" + DEFAULT)
    parser.add_argument(
        "--window-alignment",
        choices=["first_request", "clock"],
        default=defaults.window_alignment,
        help="when a quota window opens: with the first request after the last one closed, or on "
        "the clock (multiples of --window)" + DEFAULT,
    )
    parser.add_argument(
        "--token-ttl",
        type=int,
        default=defaults.token_ttl,
        help="access-token lifetime (expires_in), in seconds" + DEFAULT,
    )
    parser.add_argument(
        "--mint-limit",
        type=int,
        default=defaults.mint_limit,
        help="access tokens minted per mint window; 0 disables the throttle" + DEFAULT,
    )
    parser.add_argument(
        "--mint-window", type=float, default=defaults.mint_window, help="mint window, in seconds" + DEFAULT
    )
    add_fault_arguments(parser, defaults.fault_rate, defaults.fault_seed)
    parser.add_argument(
        "--fault-mix",
        type=fault_mix_arg,
        default=None,
        metavar="FAULT=SHARE,...",
        help="random faults at these rates per API request, e.g. garbage=0.2,503=0.05,429=0.05,"
        "drop=0.05; garbage is a 200 with a proxy's page, after the write (default: none)",
    )
    parser.add_argument(
        "--token-outage",
        type=float,
        default=defaults.token_outage_seconds,
        metavar="SECONDS",
        help="the token endpoint fails for this long after start: 503, a garbage 200, a dropped "
        "connection, 500, in turn" + DEFAULT,
    )
    parser.add_argument("--client-id", default=defaults.client_id, help="the OAuth client id it accepts" + DEFAULT)
    parser.add_argument(
        "--client-secret", default=defaults.client_secret, help="the OAuth client secret it accepts" + DEFAULT
    )
    parser.add_argument(
        "--refresh-token",
        default=defaults.refresh_token,
        help="the first refresh token it accepts; each refresh rotates it" + DEFAULT,
    )
    add_authorize_arguments(parser, defaults.consent, defaults.redirect_uris, defaults.code_ttl)
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        refresh_token=args.refresh_token,
        token_ttl=args.token_ttl,
        mint_limit=args.mint_limit,
        mint_window=args.mint_window,
        quota=args.quota,
        window=args.window,
        window_alignment=args.window_alignment,
        **fault_settings(args),
        **authorize_settings(args, SandboxConfig().redirect_uris),
        fault_mix=args.fault_mix,
        token_outage_seconds=args.token_outage,
    )


def _banner(args: argparse.Namespace, url: str) -> str:
    return (
        f"Outreach sandbox listening on {url} (client_id={args.client_id}, "
        f"refresh_token={args.refresh_token}); press Ctrl-C to stop"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``signal-engine sandbox outreach``; returns an exit code."""
    # create_app validates numbers and the schema before the port is bound.
    return run_sandbox("Outreach", build_parser(), argv, lambda args: create_app(config_from_args(args)), _banner)


if __name__ == "__main__":
    sys.exit(main())
