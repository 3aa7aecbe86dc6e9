"""A local fake of Salesforce's OAuth token endpoint and the REST API's Lead resources.

It reproduces what a Salesforce integration has to handle
(``docs/vendors/salesforce.md``): a token endpoint at
``/services/oauth2/token`` whose answer names the org's ``instance_url`` and
carries no ``expires_in`` (refresh tokens do not rotate), Bearer sessions
refused with ``INVALID_SESSION_ID``, SOQL queries of Leads by email
(``GET /services/data/vXX.X/query?q=...``), Lead create (201 ``{id, success,
errors}``), ``PATCH`` update (204) and fetch, Salesforce's error list shape
``[{"message", "errorCode", "fields"}]`` (``REQUIRED_FIELD_MISSING``,
``INVALID_FIELD``, ``STRING_TOO_LONG``, ``MALFORMED_QUERY``, ``NOT_FOUND``),
an optional blocking duplicate rule (``DUPLICATES_DETECTED``), the org's
daily request budget (``Sforce-Limit-Info: api-usage=USED/LIMIT``, 403
``REQUEST_LIMIT_EXCEEDED`` past it), plus injected faults.

The query language is the one SELECT a Lead lookup needs (Id and fields of
Lead, ``WHERE Email = '...'`` with optional ``AND IsConverted = false``,
``ORDER BY``, ``LIMIT``); anything else is ``MALFORMED_QUERY``, the stricter
reading, so a client bug shows up here rather than in a customer's org.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._authorization import (
    AuthorizationServer,
    add_authorize_arguments,
    authorize_handler,
    authorize_settings,
)
from ._tokens import TokenIssuer, expire_tokens_handler, holds_valid_bearer, oauth_error, read_token_params
from .common import (
    DEFAULT,
    Admission,
    EmailIndex,
    FaultedState,
    FixedWindowQuota,
    SandboxError,
    add_fault_arguments,
    api_middleware,
    create_sandbox_app,
    fault_settings,
    fault_view,
    guarded,
    iso_millis,
    json_body,
    json_response,
    parse_fault,
    requests_by_status,
    run_sandbox,
    sandbox_parser,
    start_app,
)

SUMMARY = (
    "Salesforce: OAuth refresh answering instance_url, SOQL Lead query by email, Lead create/patch, "
    "duplicate rules, daily API budget (Sforce-Limit-Info) and injected faults"
)

__all__ = ["STATE_KEY", "SandboxConfig", "SandboxState", "create_app", "main", "start_sandbox"]

API_PREFIX = "/services/data/"
# Standard Lead fields the fake accepts, with their documented lengths (None: not a text field).
LEAD_FIELDS: dict[str, int | None] = {
    "FirstName": 40,
    "LastName": 80,
    "Email": 80,
    "Company": 255,
    "Title": 128,
    "MobilePhone": 40,
    "Phone": 40,
    "City": 40,
    "State": 80,
    "Country": 80,
    "PostalCode": 20,
    "Street": 255,
    "LeadSource": 255,
    "Status": 255,
    "Website": 255,
    "Description": 32000,
    "Industry": 255,
}
REQUIRED = ("LastName", "Company")
READ_ONLY = frozenset({"Id", "IsConverted", "CreatedDate", "LastModifiedDate", "IsDeleted"})
_QUERY = re.compile(
    r"^\s*SELECT\s+(?P<fields>[A-Za-z_]+(?:\s*,\s*[A-Za-z_]+)*)\s+FROM\s+Lead\s+"
    r"WHERE\s+Email\s*=\s*'(?P<email>(?:[^'\\]|\\.)*)'"
    r"(?P<open>\s+AND\s+IsConverted\s*=\s*false)?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>CreatedDate|Id)(?:\s+(?P<direction>ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE,
)
_VERSION = re.compile(r"^v\d{2,3}\.0$")


@dataclass
class SandboxConfig:
    """Knobs for the fake org; defaults mirror Salesforce's documented behaviour.

    ``daily_limit`` is the org's API requests per 24 hours (a Developer
    Edition's 15,000); ``token_ttl`` the session timeout behind an access
    token (two hours by default). ``duplicate_rule`` ``block`` refuses a Lead
    whose email an existing Lead has, as an active blocking rule does;
    ``allow`` (the standard rule's API behaviour) saves it.
    """

    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    refresh_token: str = "sandbox-refresh-token"
    token_ttl: int = 7200
    daily_limit: int = 15000
    duplicate_rule: str = "allow"
    faults: list[int | str] = field(default_factory=list)
    fault_rate: float = 0.0
    fault_seed: int | None = None
    redirect_uris: list[str] = field(default_factory=lambda: ["http://127.0.0.1/callback"])
    consent: str = "approve"
    code_ttl: float = 600.0


class ApiError(SandboxError):
    """Salesforce's REST error answer: a JSON list of ``{message, errorCode, fields}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: list[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body: dict[str, Any] = {**(extra or {}), "message": message, "errorCode": code}
        if fields is not None:
            self.body["fields"] = fields

    def response(self) -> web.Response:
        return json_response([self.body], status=self.status)


class SandboxState(FaultedState, TokenIssuer):
    """Everything one fake org remembers; lives on the aiohttp app.

    ``clock`` is wall-clock epoch seconds; tests may replace it to move time.
    ``instance_url`` is set when the app is served (the token answer names it).
    """

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.time) -> None:
        if not 0.0 <= config.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        if config.daily_limit < 0 or config.token_ttl < 0:
            raise ValueError("daily_limit and token_ttl must be >= 0")
        if config.duplicate_rule not in ("allow", "block"):
            raise ValueError("duplicate_rule must be allow or block")
        self.config = config
        self.clock = clock
        self.instance_url = ""
        self.initial_faults = [parse_fault(spec) for spec in config.faults]
        self.reset()

    def reset(self) -> None:
        config = self.config
        self.refresh_tokens: set[str] = {config.refresh_token}
        self.access_tokens: dict[str, float] = {}
        self.leads: dict[str, dict[str, Any]] = {}
        self.emails = EmailIndex()
        self.next_id = 1
        self.mints = 0
        scopes = ("api", "refresh_token")
        self.authorization = AuthorizationServer(
            config.client_id, tuple(config.redirect_uris), scopes, config.consent, config.code_ttl
        )
        self.creates = 0
        self.updates = 0
        self.queries = 0
        self.statuses: list[int | str] = []
        self.token_statuses: list[int] = []
        self.requests: list[dict[str, Any]] = []
        self.reset_faults()
        self.quota = FixedWindowQuota(config.daily_limit, 86400.0)

    def issue_session(self, now: float) -> str:
        """An access token for a refresh: the refresh token stays the same (no rotation)."""
        access_token = secrets.token_urlsafe(32)
        self.access_tokens[access_token] = now + self.config.token_ttl
        return access_token

    def new_id(self) -> str:
        """An 18-character Lead id with Lead's key prefix 00Q."""
        lead_id = f"00Q{self.next_id:012d}AAA"
        self.next_id += 1
        return lead_id

    def snapshot(self) -> dict[str, Any]:
        return {
            "leads": [dict(lead) for _, lead in sorted(self.leads.items())],
            "creates": self.creates,
            "updates": self.updates,
            "queries": self.queries,
            "mints": self.mints,
            "statuses": list(self.statuses),
            "token_statuses": list(self.token_statuses),
            "requests_by_status": requests_by_status(self.statuses),
            "requests": list(self.requests),
            "authorizations": self.authorization.issued,
            "code_exchanges": self.authorization.exchanged,
            **fault_view(self),
            "api_usage": {"used": self.quota.used, "limit": self.quota.quota},
        }


STATE_KEY = web.AppKey("salesforce_sandbox_state", SandboxState)


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


def _instance_url(request: web.Request, state: SandboxState) -> str:
    return state.instance_url or f"{request.scheme}://{request.host}"


# --------------------------------------------------------------------------
# OAuth token endpoint (login.salesforce.com)
# --------------------------------------------------------------------------


def _token_answer(
    request: web.Request, state: SandboxState, access_token: str, now: float, refresh_token: str | None = None
) -> web.Response:
    """Salesforce's token answer: instance_url and id, no expires_in; a refresh token only from a code."""
    base = _instance_url(request, state)
    body: dict[str, Any] = {
        "access_token": access_token,
        "signature": "c2FuZGJveA==",
        "scope": "api refresh_token",
        "instance_url": base,
        "id": f"{base}/id/00D000000000001AAA/005000000000001AAA",
        "token_type": "Bearer",
        "issued_at": str(int(now * 1000)),
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return json_response(body)


async def token_endpoint(request: web.Request) -> web.Response:
    """``POST /services/oauth2/token``: refresh (no rotation) or exchange an authorization code."""
    state = _state(request)
    now = state.clock()
    params = await read_token_params(request)
    config = state.config
    grant = params.get("grant_type")
    if grant not in ("refresh_token", "authorization_code"):
        response = oauth_error(400, "unsupported_grant_type", "grant type not supported")
    elif params.get("client_id") != config.client_id:
        response = oauth_error(400, "invalid_client_id", "client identifier invalid")
    elif params.get("client_secret") != config.client_secret:
        response = oauth_error(400, "invalid_client", "invalid client credentials")
    elif grant == "authorization_code":
        granted = state.authorization.redeem(params, now)
        if isinstance(granted, str):
            response = oauth_error(400, "invalid_grant", "invalid authorization code")
        else:
            access_token, refresh_token = state.issue_tokens(now)
            response = _token_answer(request, state, access_token, now, refresh_token)
    elif params.get("refresh_token") not in state.refresh_tokens:
        response = oauth_error(400, "invalid_grant", "expired access/refresh token")
    else:
        access_token = state.issue_session(now)
        state.mints += 1
        response = _token_answer(request, state, access_token, now)
    state.token_statuses.append(response.status)
    return response


# --------------------------------------------------------------------------
# Leads
# --------------------------------------------------------------------------


def _require_session(request: web.Request) -> None:
    state = _state(request)
    if not _VERSION.match(request.match_info.get("version", "")):
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    if not holds_valid_bearer(request, state):
        raise ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")


async def _read_fields(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", f"Content type '{request.content_type}' not supported")
    try:
        body = await json_body(request)
    except ValueError:
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of Lead from a non-object")
    for name, value in body.items():
        if name in READ_ONLY:
            raise ApiError(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {name}. Please check the security settings of this field "
                "and verify that it is read/write for your profile or permission set.",
                [name],
            )
        if name not in LEAD_FIELDS:
            raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type Lead")
        if value is not None and not isinstance(value, str):
            kind = type(value).__name__
            raise ApiError(
                400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of string from {kind} value for field {name}"
            )
        limit = LEAD_FIELDS[name]
        if isinstance(value, str) and limit is not None and len(value) > limit:
            raise ApiError(
                400, "STRING_TOO_LONG", f"{name}: data value too large: {value[:40]} (max length={limit})", [name]
            )
    return body


def _emails(lead: Mapping[str, Any]) -> list[str]:
    email = lead.get("Email")
    return [email.lower()] if isinstance(email, str) and email else []


def _duplicate(state: SandboxState, lead: Mapping[str, Any], exclude: str | None = None) -> None:
    if state.config.duplicate_rule != "block":
        return
    holders = state.emails.holders(_emails(lead)) - {exclude}
    if holders:
        match = sorted(holders)[0]
        raise ApiError(
            400,
            "DUPLICATES_DETECTED",
            "Use one of these records?",
            [],
            extra={
                "duplicateResult": {
                    "allowSave": False,
                    "duplicateRule": "Standard_Rule_for_Leads_with_Duplicate_Contacts",
                    "duplicateRuleEntityType": "Lead",
                    "errorMessage": "You're creating a duplicate record. We recommend "
                    "you use an existing record instead.",
                    "matchResults": [
                        {
                            "entityType": "Lead",
                            "errors": [],
                            "matchEngine": "FuzzyMatchEngine",
                            "matchRecords": [
                                {
                                    "additionalInformation": [],
                                    "fieldDiffs": [],
                                    "matchConfidence": 100.0,
                                    "record": {
                                        "attributes": {
                                            "type": "Lead",
                                            "url": f"/services/data/v60.0/sobjects/Lead/{match}",
                                        },
                                        "Id": match,
                                    },
                                }
                            ],
                            "rule": "Standard_Lead_Match_Rule_v1_0",
                            "size": 1,
                            "success": True,
                        }
                    ],
                }
            },
        )


async def create_lead(request: web.Request) -> web.Response:
    """``POST /services/data/vXX.X/sobjects/Lead``: 201 ``{id, success, errors}``."""
    state = _state(request)
    fields = await _read_fields(request)
    missing = [name for name in REQUIRED if not fields.get(name)]
    if missing:
        raise ApiError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)
    _duplicate(state, fields)
    lead_id = state.new_id()
    now = iso_millis(state.clock()).replace("Z", "+0000")
    state.leads[lead_id] = {
        "Id": lead_id,
        **{k: v for k, v in fields.items() if v is not None},
        "IsConverted": False,
        "CreatedDate": now,
        "LastModifiedDate": now,
    }
    state.emails.add(lead_id, _emails(state.leads[lead_id]))
    state.creates += 1
    return json_response({"id": lead_id, "success": True, "errors": []}, status=201)


def _lead(state: SandboxState, request: web.Request) -> tuple[str, dict[str, Any]]:
    lead_id = request.match_info["id"]
    lead = state.leads.get(lead_id)
    if lead is None:
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
    return lead_id, lead


async def update_lead(request: web.Request) -> web.Response:
    """``PATCH .../sobjects/Lead/{id}``: the sent fields replace the stored ones; 204 No Content."""
    state = _state(request)
    lead_id, lead = _lead(state, request)
    fields = await _read_fields(request)
    if lead["IsConverted"]:
        raise ApiError(400, "CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", [])
    for name in REQUIRED:
        if name in fields and not fields[name]:
            raise ApiError(400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name])
    _duplicate(state, fields, exclude=lead_id)
    state.emails.drop(lead_id, _emails(lead))
    for name, value in fields.items():
        if value is None:
            lead.pop(name, None)
        else:
            lead[name] = value
    state.emails.add(lead_id, _emails(lead))
    lead["LastModifiedDate"] = iso_millis(state.clock()).replace("Z", "+0000")
    state.updates += 1
    return web.Response(status=204)


def _record(lead: Mapping[str, Any], fields: list[str], version: str) -> dict[str, Any]:
    url = f"/services/data/{version}/sobjects/Lead/{lead['Id']}"
    record: dict[str, Any] = {"attributes": {"type": "Lead", "url": url}}
    for name in fields:
        record[name] = lead.get(name)
    return record


async def get_lead(request: web.Request) -> web.Response:
    state = _state(request)
    _, lead = _lead(state, request)
    return json_response(
        _record(
            lead, ["Id", *LEAD_FIELDS, "IsConverted", "CreatedDate", "LastModifiedDate"], request.match_info["version"]
        )
    )


def _unescape(literal: str) -> str:
    return re.sub(r"\\(.)", lambda m: m.group(1), literal)


async def query(request: web.Request) -> web.Response:
    """``GET .../query?q=SELECT ... FROM Lead WHERE Email = '...'``: ``{totalSize, done, records}``."""
    state = _state(request)
    soql = request.query.get("q")
    if not soql:
        raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
    parsed = _QUERY.match(soql)
    if parsed is None:
        raise ApiError(400, "MALFORMED_QUERY", f"unexpected token in query: {soql[:80]}")
    fields = [name.strip() for name in parsed.group("fields").split(",")]
    unknown = [name for name in fields if name not in LEAD_FIELDS and name not in READ_ONLY]
    if unknown:
        raise ApiError(400, "INVALID_FIELD", f"No such column '{unknown[0]}' on entity 'Lead'")
    email = _unescape(parsed.group("email")).lower()
    matches = [state.leads[i] for i in state.emails.holders([email])]
    if parsed.group("open"):
        matches = [lead for lead in matches if not lead["IsConverted"]]
    matches.sort(
        key=lambda lead: (
            (lead["CreatedDate"], lead["Id"]) if (parsed.group("order") or "").lower() != "id" else lead["Id"]
        ),
        reverse=(parsed.group("direction") or "").upper() == "DESC",
    )
    if parsed.group("limit") is not None:
        matches = matches[: int(parsed.group("limit"))]
    state.queries += 1
    version = request.match_info["version"]
    return json_response(
        {"totalSize": len(matches), "done": True, "records": [_record(lead, fields, version) for lead in matches]}
    )


protected = guarded(_require_session)


# --------------------------------------------------------------------------
# Limits: the daily budget, Sforce-Limit-Info, REQUEST_LIMIT_EXCEEDED
# --------------------------------------------------------------------------


def _error_response(status: int) -> web.Response:
    if status == 503:
        return ApiError(503, "SERVER_UNAVAILABLE", "Server temporarily unavailable").response()
    return ApiError(status, "UNKNOWN_EXCEPTION", "Injected sandbox fault").response()


def _route_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 405:
        return ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed.").response()
    return ApiError(exc.status, "NOT_FOUND", "The requested resource does not exist").response()


def _admit(request: web.Request, state: SandboxState) -> Admission:
    """Every API request counts against the org's 24-hour budget; the answer reports usage."""
    allowed = state.quota.consume(state.clock())
    refused = None if allowed else ApiError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.").response()
    return Admission(
        refused,
        _error_response,
        lambda: {"Sforce-Limit-Info": f"api-usage={min(state.quota.used, state.quota.quota)}/{state.quota.quota}"},
    )


# --------------------------------------------------------------------------
# App
# --------------------------------------------------------------------------


def create_app(config: SandboxConfig) -> web.Application:
    app = create_sandbox_app(STATE_KEY, SandboxState(config), api_middleware(API_PREFIX, _state, _admit, _route_error))
    app.router.add_get("/services/oauth2/authorize", authorize_handler(_state))
    app.router.add_post("/services/oauth2/token", token_endpoint)
    base = "/services/data/{version}"
    app.router.add_get(f"{base}/query", protected(query))
    app.router.add_get(f"{base}/query/", protected(query))
    app.router.add_post(f"{base}/sobjects/Lead", protected(create_lead))
    app.router.add_post(f"{base}/sobjects/Lead/", protected(create_lead))
    app.router.add_get(f"{base}/sobjects/Lead/{{id}}", protected(get_lead))
    app.router.add_patch(f"{base}/sobjects/Lead/{{id}}", protected(update_lead))
    app.router.add_post("/_sandbox/expire-tokens", expire_tokens_handler(_state))
    return app


async def start_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve in the running loop (port 0 picks a free port); returns the runner and the base URL.

    The same origin is the login host and the instance the token answer names.
    """
    runner, url = await start_app(create_app(config), host, port)
    runner.app[STATE_KEY].instance_url = url
    return runner, url


def build_parser() -> argparse.ArgumentParser:
    defaults = SandboxConfig()
    parser = sandbox_parser(
        "salesforce", 8769, "Run a local fake of Salesforce's OAuth token endpoint and REST API Lead resources."
    )
    parser.add_argument(
        "--client-id", default=defaults.client_id, help="the connected app's consumer key the fake accepts" + DEFAULT
    )
    parser.add_argument(
        "--client-secret",
        default=defaults.client_secret,
        help="the connected app's consumer secret the fake accepts" + DEFAULT,
    )
    parser.add_argument(
        "--refresh-token",
        default=defaults.refresh_token,
        help="the refresh token the fake accepts (it does not rotate)" + DEFAULT,
    )
    parser.add_argument(
        "--token-ttl",
        type=int,
        default=defaults.token_ttl,
        help="seconds an access token (session) stays valid" + DEFAULT,
    )
    parser.add_argument(
        "--daily-limit",
        type=int,
        default=defaults.daily_limit,
        help="API requests allowed per 24 hours (the org's limit)" + DEFAULT,
    )
    parser.add_argument(
        "--duplicate-rule",
        choices=("allow", "block"),
        default=defaults.duplicate_rule,
        help="what a Lead whose email another Lead has meets: allow, or block (DUPLICATES_DETECTED)" + DEFAULT,
    )
    add_authorize_arguments(parser, defaults.consent, defaults.redirect_uris, defaults.code_ttl)
    add_fault_arguments(parser, defaults.fault_rate, defaults.fault_seed)
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        refresh_token=args.refresh_token,
        token_ttl=args.token_ttl,
        daily_limit=args.daily_limit,
        duplicate_rule=args.duplicate_rule,
        **fault_settings(args),
        **authorize_settings(args, SandboxConfig().redirect_uris),
    )


def _banner(args: argparse.Namespace, url: str) -> str:
    return (
        f"Salesforce sandbox listening on {url} (login host and instance; client_id={args.client_id}, "
        f"refresh_token={args.refresh_token}); press Ctrl-C to stop"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``signal-engine sandbox salesforce``; returns an exit code."""
    return run_sandbox("Salesforce", build_parser(), argv, lambda args: create_app(config_from_args(args)), _banner)


if __name__ == "__main__":
    sys.exit(main())
