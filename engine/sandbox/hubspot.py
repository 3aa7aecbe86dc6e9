"""A local fake of HubSpot's CRM v3 contacts API, authenticated by a private-app token.

It reproduces what a HubSpot integration has to handle (``docs/vendors/hubspot.md``):
the exact ``Authorization: Bearer`` check, ``{"properties": {...}}`` bodies
whose values are strings, the 400 ``VALIDATION_ERROR`` for a property the
portal does not have, the 409 ``CONFLICT`` whose message names the existing
contact's id, PATCH by id, search by email, the batch upsert by email
(``POST /crm/v3/objects/contacts/batch/upsert``: at most 100 inputs, 200
when every input went through, 207 multi-status with an ``errors`` entry
per refused input), the ``X-HubSpot-RateLimit-*``
headers on every answer and the 429 ``TEN_SECONDLY_ROLLING`` body past the
quota, plus injected faults. Where HubSpot's behaviour is unconfirmed (a
non-string value, a string over 65,536 characters, an unknown top-level key)
the fake takes the stricter reading so a client bug shows up here first.

The burst limit is a rolling ten seconds at HubSpot; the fake counts it in
fixed windows of ``window`` seconds, which is close enough for a client that
reads ``Remaining`` and ``Interval-Milliseconds``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .common import (
    DEFAULT,
    Admission,
    EmailIndex,
    FaultedState,
    FixedWindowQuota,
    SandboxError,
    add_fault_arguments,
    api_middleware,
    bearer_token,
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
    "HubSpot CRM v3 contacts: private-app bearer token, create/patch/search, batch upsert by email "
    "(200/207), 409 CONFLICT, "
    "X-HubSpot-RateLimit-* headers and injected faults"
)

__all__ = ["STATE_KEY", "SandboxConfig", "SandboxState", "create_app", "main", "start_sandbox"]

API_PREFIX = "/crm/v3/"
MAX_TEXT_LENGTH = 65536  # knowledge.hubspot.com: text properties hold 65,536 characters
# Contact properties every portal has and a lead integration may write (HubSpot default properties).
DEFAULT_PROPERTIES = frozenset(
    {
        "email",
        "firstname",
        "lastname",
        "phone",
        "mobilephone",
        "fax",
        "jobtitle",
        "company",
        "website",
        "address",
        "city",
        "state",
        "zip",
        "country",
        "lifecyclestage",
        "hs_lead_status",
        "industry",
        "salutation",
        "message",
        "hubspot_owner_id",
    }
)
READ_ONLY_PROPERTIES = frozenset({"hs_object_id", "createdate", "lastmodifieddate", "hs_createdate"})
LIFECYCLE_STAGES = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
)
CREATE_KEYS = frozenset({"properties", "associations", "objectWriteTraceId"})
UPDATE_KEYS = frozenset({"properties", "objectWriteTraceId"})
UPSERT_INPUT_KEYS = frozenset({"id", "idProperty", "properties", "objectWriteTraceId"})
MAX_BATCH_INPUTS = 100  # developers.hubspot.com, Contacts guide: batch endpoints take up to 100 records
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DOTS = re.compile(r"^\.|\.\.|\.@")  # a dot-atom local part (RFC 5322): no leading, trailing or double dot


@dataclass
class SandboxConfig:
    """Knobs for the fake portal; defaults mirror a Free/Starter portal's private-app limits.

    ``quota``/``window`` is the burst limit (100 requests per 10 s), ``daily_quota``
    the daily one. ``custom_properties`` are extra contact properties the
    portal has (e.g. a multiple-checkbox property for tags); anything else is
    refused like HubSpot refuses a property that does not exist.
    """

    access_token: str = "sandbox-private-app-token"
    quota: int = 100
    window: float = 10.0
    daily_quota: int = 250000
    custom_properties: list[str] = field(default_factory=list)
    faults: list[int | str] = field(default_factory=list)
    fault_rate: float = 0.0
    fault_seed: int | None = None


class ApiError(SandboxError):
    """An error answer in HubSpot's error format."""

    def __init__(
        self, status: int, category: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.category = category
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def response(self) -> web.Response:
        body = {
            "status": "error",
            "message": self.message,
            "correlationId": str(uuid.uuid4()),
            "category": self.category,
            **self.extra,
        }
        return json_response(body, status=self.status, headers=self.headers)


def _property_errors(problems: list[dict[str, Any]]) -> ApiError:
    """HubSpot's 400 for bad property values: the per-property results are JSON inside ``message``."""
    return ApiError(
        400, "VALIDATION_ERROR", "Property values were not valid: " + json.dumps(problems, separators=(",", ":"))
    )


def _problem(name: str, error: str, message: str) -> dict[str, Any]:
    return {"isValid": False, "message": message, "error": error, "name": name}


class SandboxState(FaultedState):
    """Everything one fake portal remembers; lives on the aiohttp app.

    ``clock`` is wall-clock epoch seconds; in-process tests may replace it to
    move time without sleeping.
    """

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.time) -> None:
        if not 0.0 <= config.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        if config.quota < 0 or config.daily_quota < 0 or config.window <= 0:
            raise ValueError("quota and daily_quota must be >= 0 and window must be > 0")
        if not config.access_token:
            raise ValueError("access_token must not be empty")
        self.config = config
        self.clock = clock
        self.initial_faults = [parse_fault(spec) for spec in config.faults]
        self.known = DEFAULT_PROPERTIES | frozenset(config.custom_properties)
        self.reset()

    def reset(self) -> None:
        """Forget everything, as if the portal had just been created."""
        self.contacts: dict[str, dict[str, str]] = {}
        self.emails = EmailIndex()
        self.meta: dict[str, dict[str, str]] = {}
        self.next_id = 1
        self.creates = 0
        self.updates = 0
        self.batches: list[list[str]] = []  # the ids of each batch upsert's inputs, in order
        self.statuses: list[int | str] = []
        self.requests: list[dict[str, Any]] = []
        self.reset_faults()
        self.burst = FixedWindowQuota(self.config.quota, self.config.window)
        # The daily limit resets at midnight (the portal's time zone; UTC here), not 24 h after a first request.
        self.daily = FixedWindowQuota(self.config.daily_quota, 86400.0, aligned=True)

    def owner_of(self, email: str, exclude: str | None = None) -> str | None:
        """The first contact made (ids count up) with this email; a contact without one has "" as one."""
        holders = self.emails.holders([email.lower()])
        holders.discard(exclude)
        return min(holders, key=int, default=None)

    def _emails_of(self, contact_id: str) -> list[str]:
        # Contacts without an email are indexed under "", so finding one is no scan either.
        return [self.contacts[contact_id].get("email", "").lower()]

    def store(self, contact_id: str, properties: dict[str, str]) -> None:
        """Add a contact, keeping the email index in step."""
        self.contacts[contact_id] = properties
        self.emails.add(contact_id, self._emails_of(contact_id))

    def change(self, contact_id: str, properties: Mapping[str, str]) -> None:
        """Sent properties overwrite, ``""`` clears; the email index follows."""
        self.emails.drop(contact_id, self._emails_of(contact_id))
        stored = self.contacts[contact_id]
        for name, value in properties.items():
            if value == "":
                stored.pop(name, None)
            else:
                stored[name] = value
        self.emails.add(contact_id, self._emails_of(contact_id))

    def snapshot(self) -> dict[str, Any]:
        return {
            "contacts": [{"id": cid, "properties": dict(props)} for cid, props in self.contacts.items()],
            "creates": self.creates,
            "updates": self.updates,
            "batches": [list(ids) for ids in self.batches],
            "statuses": list(self.statuses),
            "requests_by_status": requests_by_status(self.statuses),
            "requests": list(self.requests),
            **fault_view(self),
            "rate_limit": {
                "max": self.burst.quota,
                "remaining": self.burst.remaining(),
                "interval_ms": int(self.burst.window * 1000),
                "daily": self.daily.quota,
                "daily_remaining": self.daily.remaining(),
            },
        }


STATE_KEY = web.AppKey("hubspot_sandbox_state", SandboxState)


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


# --------------------------------------------------------------------------
# Guards: auth and bodies
# --------------------------------------------------------------------------


def _require_token(request: web.Request) -> None:
    """HubSpot accepts a private-app token only as ``Authorization: Bearer <token>``."""
    token = bearer_token(request)
    if token is not None and token == _state(request).config.access_token:
        return
    raise ApiError(
        401,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can "
        "find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
    )


async def _read_body(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(
            415, "VALIDATION_ERROR", f"Unsupported Media Type: {request.content_type or 'none'}; send application/json."
        )
    try:
        body = await json_body(request)
    except ValueError:
        raise ApiError(400, "VALIDATION_ERROR", "Invalid input JSON: the body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "VALIDATION_ERROR", "Invalid input JSON: expected an object.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "VALIDATION_ERROR", f'Invalid input JSON: Unrecognized field "{unknown[0]}".')
    properties = body.get("properties")
    if not isinstance(properties, dict):
        raise ApiError(
            400, "VALIDATION_ERROR", "Invalid input JSON: some of required attributes are not set [properties]."
        )
    return properties


def _check_properties(state: SandboxState, properties: Mapping[str, Any]) -> dict[str, str]:
    """Every property must exist, be writable, be a string and fit; all problems are reported at once."""
    problems = []
    for name, value in properties.items():
        if name in READ_ONLY_PROPERTIES:
            problems.append(
                _problem(name, "READ_ONLY_VALUE", f"{name} is a read only property; its value cannot be set.")
            )
        elif name not in state.known:
            problems.append(_problem(name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist'))
        elif not isinstance(value, str):
            problems.append(_problem(name, "INVALID_STRING", f"{json.dumps(value)} is not a string value"))
        elif len(value) > MAX_TEXT_LENGTH:
            problems.append(
                _problem(name, "INVALID_LONG", f"value is {len(value)} characters; the limit is {MAX_TEXT_LENGTH}")
            )
        elif name == "email" and value and (not _EMAIL.match(value) or _DOTS.search(value)):
            problems.append(_problem(name, "INVALID_EMAIL", f"Email address {value} is invalid"))
        elif name == "lifecyclestage" and value and value not in LIFECYCLE_STAGES:
            problems.append(
                _problem(
                    name,
                    "INVALID_OPTION",
                    f"{value} was not one of the allowed options: [{', '.join(LIFECYCLE_STAGES)}]",
                )
            )
    if problems:
        raise _property_errors(problems)
    return dict(properties)


def _refuse_taken_email(state: SandboxState, properties: Mapping[str, str], exclude: str | None = None) -> None:
    """The 409 HubSpot answers when the email already belongs to (another) contact."""
    email = properties.get("email")
    if email:
        existing = state.owner_of(email, exclude=exclude)
        if existing is not None:
            raise ApiError(409, "CONFLICT", f"Contact already exists. Existing ID: {existing}")


def _not_found(contact_id: str) -> ApiError:
    return ApiError(
        404, "OBJECT_NOT_FOUND", "Object not found.  objectId are usually numeric.", context={"id": [contact_id]}
    )


def _resource(state: SandboxState, contact_id: str, names: list[str] | None = None) -> dict[str, Any]:
    props = state.contacts[contact_id]
    meta = state.meta[contact_id]
    system = {"createdate": meta["createdAt"], "lastmodifieddate": meta["updatedAt"], "hs_object_id": contact_id}
    shown: dict[str, str | None]
    if names is None:
        shown = {**props, **system}
    else:
        shown = {name: ({**props, **system}).get(name) for name in names}
    return {
        "id": contact_id,
        "properties": shown,
        "createdAt": meta["createdAt"],
        "updatedAt": meta["updatedAt"],
        "archived": False,
    }


def _find(state: SandboxState, request: web.Request) -> str:
    """The contact named in the URL: by id, or by email with ``?idProperty=email``."""
    key = request.match_info["contact"]
    id_property = request.query.get("idProperty")
    if id_property == "email":
        found = state.owner_of(key)
        if found is None:
            raise _not_found(key)
        return found
    if id_property not in (None, "hs_object_id"):
        raise ApiError(400, "VALIDATION_ERROR", f"{id_property} is not a unique identifier property for contacts.")
    if key not in state.contacts:
        raise _not_found(key)
    return key


# --------------------------------------------------------------------------
# Contact handlers
# --------------------------------------------------------------------------


async def create_contact(request: web.Request) -> web.Response:
    """``POST /crm/v3/objects/contacts``: 201, or 409 naming the contact that has the email."""
    state = _state(request)
    properties = _check_properties(state, await _read_body(request, CREATE_KEYS))
    _refuse_taken_email(state, properties)
    contact_id = str(state.next_id)
    state.next_id += 1
    now = iso_millis(state.clock())
    state.store(contact_id, {k: v for k, v in properties.items() if v != ""})
    state.meta[contact_id] = {"createdAt": now, "updatedAt": now}
    state.creates += 1
    return json_response(_resource(state, contact_id), status=201)


async def update_contact(request: web.Request) -> web.Response:
    """``PATCH /crm/v3/objects/contacts/{id}``: sent properties overwrite, ``""`` clears."""
    state = _state(request)
    contact_id = _find(state, request)
    properties = _check_properties(state, await _read_body(request, UPDATE_KEYS))
    if not properties:
        raise ApiError(400, "VALIDATION_ERROR", "No properties found to update, please provide at least one.")
    _refuse_taken_email(state, properties, exclude=contact_id)
    state.change(contact_id, properties)
    state.meta[contact_id]["updatedAt"] = iso_millis(state.clock())
    state.updates += 1
    return json_response(_resource(state, contact_id), status=200)


async def get_contact(request: web.Request) -> web.Response:
    """``GET /crm/v3/objects/contacts/{id}?properties=a,b``."""
    state = _state(request)
    contact_id = _find(state, request)
    raw = request.query.get("properties")
    names = [n for n in raw.split(",") if n] if raw else None
    return json_response(_resource(state, contact_id, names))


def _upsert_one(state: SandboxState, item: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One input of a batch upsert by email: (the upserted object, None) or (None, its error entry)."""
    item_id = item.get("id") if isinstance(item, dict) else None
    context = {"id": [item_id if isinstance(item_id, str) else json.dumps(item_id)]}
    try:
        if not isinstance(item_id, str) or not item_id:
            raise ApiError(400, "VALIDATION_ERROR", "Invalid input JSON: id must be a non-empty string.")
        unknown = sorted(set(item) - UPSERT_INPUT_KEYS)
        if unknown:
            raise ApiError(400, "VALIDATION_ERROR", f'Invalid input JSON: Unrecognized field "{unknown[0]}".')
        if not isinstance(item.get("properties"), dict):
            raise ApiError(
                400, "VALIDATION_ERROR", "Invalid input JSON: some of required attributes are not set [properties]."
            )
        properties = _check_properties(state, {"email": item_id, **item["properties"]})
        if properties["email"].lower() != item_id.lower():
            raise ApiError(400, "VALIDATION_ERROR", "The email property does not match the input's id.")
    except ApiError as exc:
        return None, {
            "status": "error",
            "category": exc.category,
            "message": exc.message,
            "context": context,
            "errors": [],
            "links": {},
        }
    now = iso_millis(state.clock())
    existing = state.owner_of(item_id)
    if existing is None:
        existing = str(state.next_id)
        state.next_id += 1
        state.store(existing, {k: v for k, v in properties.items() if v != ""})
        state.meta[existing] = {"createdAt": now, "updatedAt": now}
        state.creates += 1
        new = True
    else:
        state.change(existing, properties)
        state.meta[existing]["updatedAt"] = now
        state.updates += 1
        new = False
    return {**_resource(state, existing, sorted(properties)), "new": new}, None


async def batch_upsert_contacts(request: web.Request) -> web.Response:
    """``POST /crm/v3/objects/contacts/batch/upsert`` by ``idProperty: email``.

    The request as a whole is refused with a 400 (bad JSON, no inputs, over
    100 inputs, an id property that is not unique, one id twice); otherwise
    every input is upserted on its own: 200 when all went through, 207 with
    an ``errors`` entry (its ``context.id`` naming the input) per refused one.
    """
    state = _state(request)
    started = iso_millis(state.clock())
    if request.content_type != "application/json":
        raise ApiError(
            415, "VALIDATION_ERROR", f"Unsupported Media Type: {request.content_type or 'none'}; send application/json."
        )
    try:
        body = await json_body(request)
    except ValueError:
        raise ApiError(400, "VALIDATION_ERROR", "Invalid input JSON: the body is not valid JSON.") from None
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "VALIDATION_ERROR", "Invalid input JSON: some of required attributes are not set [inputs].")
    if len(inputs) > MAX_BATCH_INPUTS:
        raise ApiError(
            400,
            "VALIDATION_ERROR",
            f"Batch input limit exceeded: {len(inputs)} inputs, the limit is {MAX_BATCH_INPUTS}.",
        )
    for item in inputs:
        id_property = item.get("idProperty") if isinstance(item, dict) else None
        if id_property != "email":
            raise ApiError(
                400,
                "VALIDATION_ERROR",
                f"Unable to perform update/upsert by non-unique 0-1 property "
                f"{id_property!r}; this sandbox upserts contacts by email.",
            )
    ids = [str(item.get("id", "")).lower() for item in inputs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ApiError(400, "VALIDATION_ERROR", f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique")
    state.batches.append([str(item.get("id")) for item in inputs])
    results, errors = [], []
    for item in inputs:
        result, error = _upsert_one(state, item)
        if result is not None:
            results.append(result)
        if error is not None:
            errors.append(error)
    answer: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "startedAt": started,
        "completedAt": iso_millis(state.clock()),
    }
    if errors:
        return json_response({**answer, "numErrors": len(errors), "errors": errors}, status=207)
    return json_response(answer, status=200)


def _search_email(body: Any) -> str:
    """The email of the one filter this fake understands: ``email EQ <value>``."""
    groups: Any = body.get("filterGroups") if isinstance(body, dict) else None  # JSON, checked by unpacking
    try:
        (group,) = groups
        (condition,) = group["filters"]
        if (
            condition["propertyName"] == "email"
            and condition["operator"] == "EQ"
            and isinstance(condition["value"], str)
        ):
            return condition["value"]
    except (TypeError, ValueError, KeyError):
        pass
    raise ApiError(
        400,
        "VALIDATION_ERROR",
        "This sandbox supports one filterGroup with the filter {propertyName: email, operator: EQ, value}.",
    )


async def search_contacts(request: web.Request) -> web.Response:
    """``POST /crm/v3/objects/contacts/search`` by email."""
    state = _state(request)
    try:
        body = await json_body(request)
    except ValueError:
        raise ApiError(400, "VALIDATION_ERROR", "Invalid input JSON: the body is not valid JSON.") from None
    email = _search_email(body)
    names = body.get("properties") if isinstance(body.get("properties"), list) else None
    limit = body.get("limit", 10)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 200:
        raise ApiError(400, "VALIDATION_ERROR", "limit must be an integer from 1 to 200.")
    found = state.owner_of(email)
    results = [] if found is None else [_resource(state, found, names or ["email", "firstname", "lastname"])]
    return json_response({"total": len(results), "results": results[:limit]})


# Check the private-app token, then render ``ApiError`` in HubSpot's format.
protected = guarded(_require_token)


# --------------------------------------------------------------------------
# /crm limits: the daily and burst budgets, their headers, the 429
# --------------------------------------------------------------------------


def _rate_limit_headers(state: SandboxState) -> dict[str, str]:
    """The headers HubSpot sends to private apps: the daily budget and the rolling burst interval."""
    return {
        "X-HubSpot-RateLimit-Daily": str(state.daily.quota),
        "X-HubSpot-RateLimit-Daily-Remaining": str(state.daily.remaining()),
        "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(state.burst.window * 1000)),
        "X-HubSpot-RateLimit-Max": str(state.burst.quota),
        "X-HubSpot-RateLimit-Remaining": str(state.burst.remaining()),
    }


def _rate_limited(policy: str) -> web.Response:
    """HubSpot's 429 body; ``policyName`` says which limit was hit."""
    message = (
        "You have reached your daily limit."
        if policy == "DAILY"
        else "You have reached your ten_secondly_rolling limit."
    )
    body = {
        "status": "error",
        "message": message,
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
        "policyName": policy,
    }
    return json_response(body, status=429)


def _fault_response(status: int) -> web.Response:
    if status == 429:
        return _rate_limited("TEN_SECONDLY_ROLLING")
    return ApiError(
        status, "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR", "Injected sandbox fault."
    ).response()


def _route_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        return ApiError(404, "OBJECT_NOT_FOUND", f"No route for {request.path}.").response()
    return ApiError(exc.status, "VALIDATION_ERROR", exc.reason).response()


def _admit(request: web.Request, state: SandboxState) -> Admission:
    """The daily and the burst budget both count every request; the daily one is reported first."""
    now = state.clock()
    daily_ok = state.daily.consume(now)
    burst_ok = state.burst.consume(now)
    refused = None if daily_ok and burst_ok else _rate_limited("TEN_SECONDLY_ROLLING" if daily_ok else "DAILY")
    return Admission(refused, _fault_response, lambda: _rate_limit_headers(state))


# --------------------------------------------------------------------------
# App
# --------------------------------------------------------------------------


def create_app(config: SandboxConfig) -> web.Application:
    """The fake portal; ``POST /_sandbox/reset`` brings back no contacts, full quotas and the start-up faults."""
    app = create_sandbox_app(STATE_KEY, SandboxState(config), api_middleware(API_PREFIX, _state, _admit, _route_error))
    app.router.add_post("/crm/v3/objects/contacts", protected(create_contact))
    app.router.add_post("/crm/v3/objects/contacts/search", protected(search_contacts))
    app.router.add_post("/crm/v3/objects/contacts/batch/upsert", protected(batch_upsert_contacts))
    app.router.add_get("/crm/v3/objects/contacts/{contact}", protected(get_contact))
    app.router.add_patch("/crm/v3/objects/contacts/{contact}", protected(update_contact))
    return app


async def start_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve in the running loop (port 0 picks a free port); returns the runner and the base URL."""
    return await start_app(create_app(config), host, port)


def build_parser() -> argparse.ArgumentParser:
    defaults = SandboxConfig()
    parser = sandbox_parser(
        "hubspot", 8766, "Run a local fake of HubSpot's CRM v3 contacts API (private-app token auth)."
    )
    parser.add_argument(
        "--access-token",
        default=defaults.access_token,
        help="the private-app access token the fake accepts as 'Authorization: Bearer'" + DEFAULT,
    )
    parser.add_argument("--quota", type=int, default=defaults.quota, help="requests per burst window" + DEFAULT)
    parser.add_argument("--window", type=float, default=defaults.window, help="burst window in seconds" + DEFAULT)
    parser.add_argument("--daily-quota", type=int, default=defaults.daily_quota, help="requests per day" + DEFAULT)
    parser.add_argument(
        "--custom-property",
        action="append",
        default=[],
        dest="custom_properties",
        help="an extra contact property the portal has, e.g. a tags property; repeat it for several (default: none)",
    )
    add_fault_arguments(parser, defaults.fault_rate, defaults.fault_seed)
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        access_token=args.access_token,
        quota=args.quota,
        window=args.window,
        daily_quota=args.daily_quota,
        custom_properties=list(args.custom_properties),
        **fault_settings(args),
    )


def _banner(args: argparse.Namespace, url: str) -> str:
    return f"HubSpot sandbox listening on {url} (access_token={args.access_token}); press Ctrl-C to stop"


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``signal-engine sandbox hubspot``; returns an exit code."""
    return run_sandbox("HubSpot", build_parser(), argv, lambda args: create_app(config_from_args(args)), _banner)


if __name__ == "__main__":
    sys.exit(main())
