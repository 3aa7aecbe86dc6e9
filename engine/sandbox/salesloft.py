"""A local fake of Salesloft's OAuth token endpoint and v2 people API.

It reproduces what a Salesloft integration has to handle (``docs/vendors/salesloft.md``):
an ``accounts`` token endpoint whose refresh tokens are single-use (every
refresh rotates them), two-hour access tokens checked as ``Authorization:
Bearer``, people create/list/fetch/update, the duplicate-email 422
``{"errors": {"email_address": ["has already been taken"]}}``, lookup by
``email_addresses[]``, ``PUT`` that replaces the tags it is sent, the
``x-ratelimit-endpoint-cost`` / ``x-ratelimit-remaining-minute`` headers
with a per-minute cost budget and a 429 past it, plus injected faults.

Where Salesloft is silent (unknown body fields or query parameters, the 401
and 429 bodies) the fake takes the stricter reading, so a client bug shows up
here rather than in a customer's team.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    FaultedState,
    FixedWindowQuota,
    JsonError,
    add_fault_arguments,
    api_middleware,
    basic_credentials,
    create_sandbox_app,
    fault_settings,
    fault_view,
    guarded,
    json_body,
    json_response,
    parse_fault,
    requests_by_status,
    run_sandbox,
    sandbox_parser,
    start_app,
)

SUMMARY = (
    "Salesloft: OAuth token endpoint with single-use refresh tokens, people create/lookup/put, "
    "duplicate-email 422, cost budget and injected faults"
)

__all__ = ["STATE_KEY", "SandboxConfig", "SandboxState", "create_app", "main", "start_sandbox"]

API_PREFIX = "/v2/"
TEXT_FIELDS = frozenset(
    {
        "email_address",
        "secondary_email_address",
        "personal_email_address",
        "first_name",
        "last_name",
        "phone",
        "phone_extension",
        "mobile_phone",
        "home_phone",
        "linkedin_url",
        "title",
        "city",
        "state",
        "country",
        "work_city",
        "work_state",
        "work_country",
        "person_company_name",
        "person_company_website",
        "person_company_industry",
        "locale",
        "personal_website",
        "twitter_handle",
    }
)
INTEGER_FIELDS = frozenset({"account_id", "owner_id", "import_id", "person_stage_id"})
BOOLEAN_FIELDS = frozenset({"do_not_contact"})
CREATE_ONLY = frozenset({"autotag_date"})
WRITABLE = TEXT_FIELDS | INTEGER_FIELDS | BOOLEAN_FIELDS | {"tags", "custom_fields"}
LIST_PARAMS = frozenset(
    {
        "ids[]",
        "email_addresses[]",
        "updated_at[gt]",
        "updated_at[gte]",
        "updated_at[lt]",
        "updated_at[lte]",
        "sort_by",
        "sort_direction",
        "per_page",
        "page",
        "include_paging_counts",
    }
)
TAKEN = "has already been taken"


@dataclass
class SandboxConfig:
    """Knobs for the fake team; defaults mirror Salesloft's documented limits.

    ``quota`` is the 600-cost-per-minute team budget, counted in calendar
    minutes of ``window`` seconds; ``token_ttl`` the two-hour access tokens.
    The authorize step answers as ``consent`` says, to the registered
    ``redirect_uris`` (a loopback one accepts any port); its redirect carries
    ``code``, ``context`` and ``scope``, and the exchange must send the last
    two back, as Salesloft's docs show it.
    """

    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    refresh_token: str = "sandbox-refresh-token"
    token_ttl: int = 7200
    quota: int = 600
    window: float = 60.0
    faults: list[int | str] = field(default_factory=list)
    fault_rate: float = 0.0
    fault_seed: int | None = None
    redirect_uris: list[str] = field(default_factory=lambda: ["http://127.0.0.1/callback"])
    consent: str = "approve"
    code_ttl: float = 600.0


ApiError = JsonError  # Salesloft's errors are plain JSON bodies


def _invalid(errors: Mapping[str, list[str]]) -> ApiError:
    """Salesloft's validation answer: a hash of field name to messages."""
    return ApiError(422, {"errors": dict(errors)})


class SandboxState(FaultedState, TokenIssuer):
    """Everything one fake team remembers; lives on the aiohttp app.

    ``clock`` is wall-clock epoch seconds; tests may replace it to move time.
    """

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.time) -> None:
        if not 0.0 <= config.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        if config.quota < 0 or config.window <= 0 or config.token_ttl < 0:
            raise ValueError("quota and token_ttl must be >= 0 and window must be > 0")
        self.config = config
        self.clock = clock
        self.initial_faults = [parse_fault(spec) for spec in config.faults]
        self.reset()

    def reset(self) -> None:
        config = self.config
        self.refresh_tokens: set[str] = {config.refresh_token}
        self.access_tokens: dict[str, float] = {}
        self.people: dict[int, dict[str, Any]] = {}
        self.emails = EmailIndex()
        self.next_id = 1
        self.mints = 0
        # Salesloft's authorize URL takes no scope: the app's scopes are set in its settings.
        self.authorization = AuthorizationServer(
            config.client_id,
            tuple(config.redirect_uris),
            (),
            config.consent,
            config.code_ttl,
            echo=("context", "scope"),
        )
        self.creates = 0
        self.updates = 0
        self.statuses: list[int | str] = []
        self.token_statuses: list[int] = []
        self.requests: list[dict[str, Any]] = []
        self.reset_faults()
        self.quota = FixedWindowQuota(config.quota, config.window, aligned=True)

    def mint(self, old_refresh_token: str, now: float) -> tuple[str, str]:
        """Spend the refresh token (single use) and issue a new pair."""
        self.refresh_tokens.discard(old_refresh_token)
        self.mints += 1
        return self.issue_tokens(now)

    def email_owner(self, email: Any, exclude: int | None = None) -> int | None:
        if not isinstance(email, str) or not email:
            return None
        holders = self.emails.holders([email.lower()])
        holders.discard(exclude)
        return min(holders, default=None)

    def emails_of(self, person_id: int) -> list[str]:
        stored = self.people[person_id].get("email_address")
        return [stored.lower()] if isinstance(stored, str) and stored else []

    def snapshot(self) -> dict[str, Any]:
        return {
            "people": [dict(person) for _, person in sorted(self.people.items())],
            "creates": self.creates,
            "updates": self.updates,
            "mints": self.mints,
            "statuses": list(self.statuses),
            "token_statuses": list(self.token_statuses),
            "requests_by_status": requests_by_status(self.statuses),
            "requests": list(self.requests),
            "refresh_tokens": sorted(self.refresh_tokens),
            "authorizations": self.authorization.issued,
            "code_exchanges": self.authorization.exchanged,
            **fault_view(self),
            "rate_limit": {"limit": self.quota.quota, "remaining": self.quota.remaining()},
        }


STATE_KEY = web.AppKey("salesloft_sandbox_state", SandboxState)


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


def _iso(now: float) -> str:
    moment = datetime.fromtimestamp(now, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------
# OAuth token endpoint (accounts.salesloft.com)
# --------------------------------------------------------------------------


async def _token_params(request: web.Request) -> dict[str, Any]:
    """The refresh request as a form or JSON; client credentials may also come as HTTP Basic."""
    params = await read_token_params(request)
    credentials = basic_credentials(request)
    if credentials is not None:
        user, _, password = credentials
        params.setdefault("client_id", user)
        params.setdefault("client_secret", password)
    return params


def _refresh(state: SandboxState, params: Mapping[str, Any], now: float) -> web.Response:
    config = state.config
    if params.get("client_id") != config.client_id or params.get("client_secret") != config.client_secret:
        return oauth_error(
            401,
            "invalid_client",
            "Client authentication failed due to unknown client, "
            "no client authentication included, or unsupported authentication method.",
        )
    if params.get("grant_type") == "authorization_code":
        return _exchange_code(state, params, now)
    if params.get("grant_type") != "refresh_token":
        return oauth_error(
            400, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server."
        )
    old = params.get("refresh_token")
    if not isinstance(old, str) or old not in state.refresh_tokens:
        return oauth_error(
            400,
            "invalid_grant",
            "The provided authorization grant is invalid, expired, revoked, "
            "does not match the redirection URI used in the authorization request, or was issued "
            "to another client.",
        )
    access_token, refresh_token = state.mint(old, now)
    return token_response(access_token, refresh_token, config.token_ttl, "", now)


def _exchange_code(state: SandboxState, params: Mapping[str, Any], now: float) -> web.Response:
    """The code from the redirect (with its context and scope) for the first tokens of a new chain."""
    granted = state.authorization.redeem(params, now)
    if isinstance(granted, str):
        return oauth_error(400, "invalid_grant", granted)
    access_token, refresh_token = state.issue_tokens(now)
    return token_response(access_token, refresh_token, state.config.token_ttl, granted.scope, now)


async def token_endpoint(request: web.Request) -> web.Response:
    """``POST /oauth/token``: refresh with rotation, or exchange an authorization code."""
    state = _state(request)
    response = _refresh(state, await _token_params(request), state.clock())
    state.token_statuses.append(response.status)
    return response


# --------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------


def _require_bearer(request: web.Request) -> None:
    if holds_valid_bearer(request, _state(request)):
        return
    raise ApiError(401, {"error": "Not authorized"})


async def _read_fields(request: web.Request, *, creating: bool) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(
            415, {"error": f"Unsupported media type {request.content_type or 'none'}; send application/json"}
        )
    try:
        body = await json_body(request)
    except ValueError:
        raise ApiError(400, {"error": "The body is not valid JSON"}) from None
    if not isinstance(body, dict):
        raise ApiError(400, {"error": "The body must be a JSON object"})
    errors: dict[str, list[str]] = {}
    allowed = WRITABLE | (CREATE_ONLY if creating else frozenset())
    for name, value in body.items():
        if name not in allowed:
            errors[name] = ["is not a valid field"]
        elif value is None:
            continue
        elif name in TEXT_FIELDS and not isinstance(value, str):
            errors[name] = ["must be a string"]
        elif name in INTEGER_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            errors[name] = ["must be an integer"]
        elif name in BOOLEAN_FIELDS | CREATE_ONLY and not isinstance(value, bool):
            errors[name] = ["must be true or false"]
        elif name == "tags" and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            errors[name] = ["must be an array of strings"]
        elif name == "custom_fields" and not isinstance(value, dict):
            errors[name] = ["must be an object"]
    if errors:
        raise _invalid(errors)
    return body


def _person_view(person_id: int, person: Mapping[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"id": person_id}
    for name in sorted(TEXT_FIELDS | INTEGER_FIELDS | BOOLEAN_FIELDS):
        view[name] = person.get(name)
    view["do_not_contact"] = bool(person.get("do_not_contact"))
    view["tags"] = list(person.get("tags") or [])
    view["custom_fields"] = dict(person.get("custom_fields") or {})
    first, last = person.get("first_name"), person.get("last_name")
    view["display_name"] = " ".join(p for p in (first, last) if p) or person.get("email_address")
    view["created_at"] = person["created_at"]
    view["updated_at"] = person["updated_at"]
    return view


def _store(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in CREATE_ONLY}


async def create_person(request: web.Request) -> web.Response:
    """``POST /v2/people``: 200 with the person, or 422 when the email is taken."""
    state = _state(request)
    fields = await _read_fields(request, creating=True)
    if not fields.get("email_address") and not (fields.get("phone") and fields.get("last_name")):
        raise _invalid({"base": ["Either email_address or phone and last_name must be provided"]})
    if state.email_owner(fields.get("email_address")) is not None:
        raise _invalid({"email_address": [TAKEN]})
    person_id = state.next_id
    state.next_id += 1
    now = _iso(state.clock())
    state.people[person_id] = {**_store(fields), "created_at": now, "updated_at": now}
    state.emails.add(person_id, state.emails_of(person_id))
    if fields.get("autotag_date"):
        today = datetime.fromtimestamp(state.clock(), tz=UTC).strftime("%Y-%m-%d")
        state.people[person_id]["tags"] = [*(fields.get("tags") or []), today]
    state.creates += 1
    return json_response({"data": _person_view(person_id, state.people[person_id])})


def _lookup(state: SandboxState, request: web.Request) -> tuple[int, dict[str, Any]]:
    person_id = int(request.match_info["id"])
    person = state.people.get(person_id)
    if person is None:
        raise ApiError(404, {"error": "Not Found"})
    return person_id, person


async def update_person(request: web.Request) -> web.Response:
    """``PUT /v2/people/{id}``: sent fields replace stored ones, ``tags`` as a whole."""
    state = _state(request)
    person_id, person = _lookup(state, request)
    fields = await _read_fields(request, creating=False)
    if state.email_owner(fields.get("email_address"), exclude=person_id) is not None:
        raise _invalid({"email_address": [TAKEN]})
    state.emails.drop(person_id, state.emails_of(person_id))
    person.update(fields)
    state.emails.add(person_id, state.emails_of(person_id))
    person["updated_at"] = _iso(state.clock())
    state.updates += 1
    return json_response({"data": _person_view(person_id, person)})


async def get_person(request: web.Request) -> web.Response:
    state = _state(request)
    person_id, person = _lookup(state, request)
    return json_response({"data": _person_view(person_id, person)})


def _int_param(request: web.Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        raise ApiError(400, {"errors": {name: [f"must be an integer from {low}" + (f" to {high}" if high else "")]}})
    return int(raw)


async def list_people(request: web.Request) -> web.Response:
    """``GET /v2/people?email_addresses[]=…``: the upsert lookup; unknown parameters are refused."""
    state = _state(request)
    unknown = sorted(set(request.query) - LIST_PARAMS)
    if unknown:
        raise ApiError(400, {"errors": {unknown[0]: ["is not a supported parameter"]}})
    per_page = _int_param(request, "per_page", 25, 1, 100)
    page = _int_param(request, "page", 1, 1, None)
    emails = {e.strip().lower() for e in request.query.getall("email_addresses[]", []) if e.strip()}
    ids = {int(i) for i in request.query.getall("ids[]", []) if i.isdigit()}
    candidates = sorted(state.emails.holders(emails)) if emails else sorted(state.people)
    matches = [(pid, state.people[pid]) for pid in candidates if not ids or pid in ids]
    start = (page - 1) * per_page
    chunk = matches[start : start + per_page]
    filtering: dict[str, Any] = {}
    if emails:
        filtering["email_addresses"] = request.query.getall("email_addresses[]")
    paging = {
        "per_page": per_page,
        "current_page": page,
        "next_page": page + 1 if start + per_page < len(matches) else None,
        "prev_page": page - 1 if page > 1 else None,
    }
    return json_response(
        {
            "metadata": {
                "filtering": filtering,
                "paging": paging,
                "sorting": {"sort_by": "updated_at", "sort_direction": "DESC NULLS LAST"},
            },
            "data": [_person_view(pid, p) for pid, p in chunk],
        }
    )


protected = guarded(_require_bearer)


# --------------------------------------------------------------------------
# /v2 limits: the cost budget, its headers, the 429
# --------------------------------------------------------------------------


def request_cost(request: web.Request) -> int:
    """Salesloft's documented surcharge for deep pages; everything else costs 1."""
    raw = request.query.get("page", "1")
    page = int(raw) if raw.isdigit() else 1
    if page > 500:
        return 30
    if page > 250:
        return 10
    if page > 150:
        return 8
    if page > 100:
        return 3
    return 1


def _rate_limited() -> web.Response:
    return json_response({"error": "Rate limit exceeded", "status": 429}, status=429)


def _fault_response(status: int) -> web.Response:
    if status == 429:
        return _rate_limited()
    return json_response({"error": "Injected sandbox fault", "status": status}, status=status)


def _route_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    return json_response({"error": exc.reason, "status": exc.status}, status=exc.status)


def _admit(request: web.Request, state: SandboxState) -> Admission:
    """The team's cost budget; every answer says what the request cost and what is left this minute."""
    cost = request_cost(request)
    refused = None if state.quota.consume(state.clock(), cost) else _rate_limited()
    return Admission(
        refused,
        _fault_response,
        lambda: {"x-ratelimit-endpoint-cost": str(cost), "x-ratelimit-remaining-minute": str(state.quota.remaining())},
    )


# --------------------------------------------------------------------------
# Admin and app
# --------------------------------------------------------------------------


def create_app(config: SandboxConfig) -> web.Application:
    app = create_sandbox_app(STATE_KEY, SandboxState(config), api_middleware(API_PREFIX, _state, _admit, _route_error))
    # accounts.salesloft.com: where a person approves the app
    app.router.add_get("/oauth/authorize", authorize_handler(_state))
    app.router.add_post("/oauth/token", token_endpoint)
    for suffix in ("", ".json"):
        app.router.add_get(f"/v2/people{suffix}", protected(list_people))
        app.router.add_post(f"/v2/people{suffix}", protected(create_person))
        app.router.add_get(rf"/v2/people/{{id:\d+}}{suffix}", protected(get_person))
        app.router.add_put(rf"/v2/people/{{id:\d+}}{suffix}", protected(update_person))
    app.router.add_post("/_sandbox/expire-tokens", expire_tokens_handler(_state))
    return app


async def start_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve in the running loop (port 0 picks a free port); returns the runner and the base URL.

    The same origin serves the token endpoint and the API, so a preset's
    ``base_url`` and ``accounts_url`` may both point at it.
    """
    return await start_app(create_app(config), host, port)


def build_parser() -> argparse.ArgumentParser:
    defaults = SandboxConfig()
    parser = sandbox_parser(
        "salesloft", 8767, "Run a local fake of Salesloft's OAuth token endpoint and v2 people API."
    )
    parser.add_argument(
        "--client-id", default=defaults.client_id, help="the OAuth client id the fake accepts" + DEFAULT
    )
    parser.add_argument(
        "--client-secret", default=defaults.client_secret, help="the OAuth client secret the fake accepts" + DEFAULT
    )
    parser.add_argument(
        "--refresh-token",
        default=defaults.refresh_token,
        help="the refresh token the fake accepts first (single use: it rotates on every refresh)" + DEFAULT,
    )
    parser.add_argument(
        "--token-ttl",
        type=int,
        default=defaults.token_ttl,
        help="access-token lifetime (expires_in), in seconds" + DEFAULT,
    )
    add_authorize_arguments(parser, defaults.consent, defaults.redirect_uris, defaults.code_ttl)
    parser.add_argument(
        "--quota",
        type=int,
        default=defaults.quota,
        help="request cost allowed per window (the team's budget)" + DEFAULT,
    )
    parser.add_argument(
        "--window", type=float, default=defaults.window, help="cost window, in seconds, aligned to the clock" + DEFAULT
    )
    add_fault_arguments(parser, defaults.fault_rate, defaults.fault_seed)
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        refresh_token=args.refresh_token,
        token_ttl=args.token_ttl,
        quota=args.quota,
        window=args.window,
        **fault_settings(args),
        **authorize_settings(args, SandboxConfig().redirect_uris),
    )


def _banner(args: argparse.Namespace, url: str) -> str:
    return (
        f"Salesloft sandbox listening on {url} (API and accounts; client_id={args.client_id}, "
        f"refresh_token={args.refresh_token}); press Ctrl-C to stop"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``signal-engine sandbox salesloft``; returns an exit code."""
    return run_sandbox("Salesloft", build_parser(), argv, lambda args: create_app(config_from_args(args)), _banner)


if __name__ == "__main__":
    sys.exit(main())
