"""A local fake of Close's leads, contacts and Advanced Filtering API.

It reproduces what a Close integration has to handle (``docs/vendors/close.md``):
HTTP Basic auth with the API key as the username and an empty password,
leads created with nested ``contacts[].emails[]``/``phones[]`` and
``addresses[]`` (countries as ISO 3166-1 alpha-2 codes), **no deduplication**
(the same lead posted twice is two leads: a client must look up first), the
lead-by-contact-email query of ``POST /api/v1/data/search/``, ``PUT`` of a
contact replacing the lists it is sent, 400 ``field-errors`` for bad
values, the ``ratelimit`` header per endpoint group and the 429 whose body
carries ``error.rate_reset``, plus injected faults.

Where Close is silent (unknown fields, empty list entries, the 401 body) the
fake takes the stricter reading, so a client bug shows up here first.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import phonenumbers
import pycountry
from aiohttp import web

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
    "Close: API-key basic auth, leads with nested contacts (no dedupe), lead-by-email search, contact "
    "put, ratelimit/429 and injected faults"
)

__all__ = ["STATE_KEY", "SandboxConfig", "SandboxState", "create_app", "main", "start_sandbox"]

API_PREFIX = "/api/v1/"
LEAD_FIELDS = frozenset({"name", "url", "description", "status", "status_id", "contacts", "addresses"})
LEAD_PREFIX = "lead_sandbox"
CONTACT_FIELDS = frozenset({"name", "title", "emails", "phones", "urls"})
ADDRESS_FIELDS = frozenset({"label", "address_1", "address_2", "city", "state", "zipcode", "country"})
CONTACT_INFO_TYPES = frozenset({"office", "mobile", "home", "direct", "fax", "other"})
ADDRESS_LABELS = frozenset({"business", "mailing", "other"})
COUNTRIES = frozenset(country.alpha_2 for country in pycountry.countries)  # ISO 3166-1 alpha-2
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CUSTOM = re.compile(r"^custom\.cf_[A-Za-z0-9]+$")


@dataclass
class SandboxConfig:
    """Knobs for the fake organisation.

    ``quota`` requests per ``window`` seconds apply to each endpoint group
    (path and method), per API key, as Close counts them; Close does not
    publish the numbers, so the default is its documentation's example of
    20 requests per second.
    """

    api_key: str = "sandbox-api-key"
    quota: int = 20
    window: float = 1.0
    faults: list[int | str] = field(default_factory=list)
    fault_rate: float = 0.0
    fault_seed: int | None = None


ApiError = JsonError  # Close's errors are plain JSON bodies


def _field_errors(errors: Mapping[str, Any]) -> ApiError:
    """Close's 400: ``{"errors": [], "field-errors": {field: message}}``."""
    return ApiError(400, {"errors": [], "field-errors": dict(errors)})


class SandboxState(FaultedState):
    """Everything one fake organisation remembers; lives on the aiohttp app."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.time) -> None:
        if not 0.0 <= config.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        if config.quota < 0 or config.window <= 0:
            raise ValueError("quota must be >= 0 and window must be > 0")
        if not config.api_key:
            raise ValueError("api_key must not be empty")
        self.config = config
        self.clock = clock
        self.initial_faults = [parse_fault(spec) for spec in config.faults]
        self.reset()

    def reset(self) -> None:
        self.leads: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.emails = EmailIndex()  # contact ids by email
        self.lead_seq = 0
        self.contact_seq = 0
        self.creates = 0
        self.updates = 0
        self.searches = 0
        self.statuses: list[int | str] = []
        self.requests: list[dict[str, Any]] = []
        self.reset_faults()
        self.groups: dict[str, FixedWindowQuota] = {}

    def quota_for(self, group: str) -> FixedWindowQuota:
        if group not in self.groups:
            self.groups[group] = FixedWindowQuota(self.config.quota, self.config.window)
        return self.groups[group]

    def leads_with_email(self, email: str) -> list[str]:
        lead_ids = {self.contacts[c]["lead_id"] for c in self.emails.holders([email.lower()])}
        return sorted(lead_ids, key=lambda lead_id: int(lead_id[len(LEAD_PREFIX) :]))  # in the order made

    def emails_of(self, contact_id: str) -> set[str]:
        return {e["email"].lower() for e in self.contacts[contact_id]["emails"]}

    def snapshot(self) -> dict[str, Any]:
        return {
            "leads": [lead_view(self, lead_id) for lead_id in self.leads],
            "lead_count": len(self.leads),
            "contact_count": len(self.contacts),
            "creates": self.creates,
            "updates": self.updates,
            "searches": self.searches,
            "statuses": list(self.statuses),
            "requests_by_status": requests_by_status(self.statuses),
            "requests": list(self.requests),
            **fault_view(self),
        }


STATE_KEY = web.AppKey("close_sandbox_state", SandboxState)


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


def _iso(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).isoformat()


# --------------------------------------------------------------------------
# Validation of nested lead and contact bodies
# --------------------------------------------------------------------------


def _unknown(data: Mapping[str, Any], allowed: frozenset[str]) -> list[str]:
    return sorted(k for k in data if k not in allowed and not _CUSTOM.match(k))


def _check_text(errors: dict[str, Any], where: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        errors[where] = "Must be a string."


def _email_problem(value: Any) -> str | None:
    if isinstance(value, str) and _EMAIL.match(value):
        return None
    return "Invalid email address." if value else "This field is required."


def _phone_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "This field is required."
    return "Invalid phone number." if _e164(value) is None else None


def _check_contact_infos(
    errors: dict[str, Any], where: str, items: Any, key: str, problem: Callable[[Any], str | None]
) -> None:
    """A contact's ``emails`` or ``phones``: a list of ``{key, type}`` objects."""
    if not isinstance(items, list):
        errors[where] = "Must be a list."
        return
    for i, item in enumerate(items):
        place = f"{where}.{i}"
        if not isinstance(item, dict) or _unknown(item, frozenset({key, "type"})):
            errors[place] = f"Must be an object with {key} and type."
        elif (message := problem(item.get(key))) is not None:
            errors[f"{place}.{key}"] = message
        elif item.get("type", "office") not in CONTACT_INFO_TYPES:
            errors[f"{place}.type"] = f"Must be one of: {', '.join(sorted(CONTACT_INFO_TYPES))}."


def _check_emails(errors: dict[str, Any], where: str, emails: Any) -> None:
    _check_contact_infos(errors, where, emails, "email", _email_problem)


def _check_phones(errors: dict[str, Any], where: str, phones: Any) -> None:
    _check_contact_infos(errors, where, phones, "phone", _phone_problem)


def _check_object(errors: dict[str, Any], where: str, value: Any, allowed: frozenset[str]) -> bool:
    """Whether ``value`` is an object, so its fields can be checked; its unknown fields are noted."""
    if not isinstance(value, dict):
        errors[where] = "Must be an object."
        return False
    for name in _unknown(value, allowed):
        errors[f"{where}.{name}"] = "Unknown field."
    return True


def _check_contact(errors: dict[str, Any], where: str, contact: Any) -> None:
    if not _check_object(errors, where, contact, CONTACT_FIELDS):
        return
    _check_text(errors, f"{where}.name", contact.get("name"))
    _check_text(errors, f"{where}.title", contact.get("title"))
    if "emails" in contact:
        _check_emails(errors, f"{where}.emails", contact["emails"])
    if "phones" in contact:
        _check_phones(errors, f"{where}.phones", contact["phones"])
    if not any(contact.get(k) for k in ("name", "emails", "phones", "urls")):
        errors[where] = "A contact needs a name, an email, a phone or a URL."


def _check_address(errors: dict[str, Any], where: str, address: Any) -> None:
    if not _check_object(errors, where, address, ADDRESS_FIELDS):
        return
    for name in ADDRESS_FIELDS:
        _check_text(errors, f"{where}.{name}", address.get(name))
    country = address.get("country")
    if isinstance(country, str) and country not in COUNTRIES:
        errors[f"{where}.country"] = f"Invalid country code: {country!r}; use an ISO 3166-1 alpha-2 code."
    if address.get("label", "business") not in ADDRESS_LABELS:
        errors[f"{where}.label"] = f"Must be one of: {', '.join(sorted(ADDRESS_LABELS))}."
    if not any(address.get(k) for k in ADDRESS_FIELDS - {"label"}):
        errors[where] = "An address needs at least one of address_1, address_2, city, state, zipcode, country."


def check_lead(body: Any) -> None:
    if not isinstance(body, dict):
        raise _field_errors({"__all__": "The body must be a JSON object."})
    errors: dict[str, Any] = {}
    for name in _unknown(body, LEAD_FIELDS):
        errors[name] = "Unknown field."
    for name in ("name", "url", "description", "status", "status_id"):
        _check_text(errors, name, body.get(name))
    if "status" in body and "status_id" in body:
        errors["status"] = "Post either status or status_id, not both."
    for key, check in (("contacts", _check_contact), ("addresses", _check_address)):
        items = body.get(key, [])
        if not isinstance(items, list):
            errors[key] = "Must be a list."
            continue
        for i, item in enumerate(items):
            check(errors, f"{key}.{i}", item)
    if errors:
        raise _field_errors(errors)


def check_contact_update(body: Any) -> None:
    if not isinstance(body, dict):
        raise _field_errors({"__all__": "The body must be a JSON object."})
    errors: dict[str, Any] = {}
    for name in _unknown(body, CONTACT_FIELDS | {"lead_id"}):
        errors[name] = "Unknown field."
    _check_text(errors, "name", body.get("name"))
    _check_text(errors, "title", body.get("title"))
    if "emails" in body:
        _check_emails(errors, "emails", body["emails"])
    if "phones" in body:
        _check_phones(errors, "phones", body["phones"])
    if errors:
        raise _field_errors(errors)


def _e164(raw: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --------------------------------------------------------------------------
# Storage and views
# --------------------------------------------------------------------------


def _stored_emails(items: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [{"email": item["email"], "type": item.get("type", "office")} for item in items]


def _stored_phones(items: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [{"phone": _e164(item["phone"]) or item["phone"], "type": item.get("type", "office")} for item in items]


def _new_contact(state: SandboxState, lead_id: str, data: Mapping[str, Any], now: str) -> str:
    state.contact_seq += 1
    contact_id = f"cont_sandbox{state.contact_seq:04d}"
    state.contacts[contact_id] = {
        "lead_id": lead_id,
        "name": data.get("name"),
        "title": data.get("title"),
        "emails": _stored_emails(data.get("emails", [])),
        "phones": _stored_phones(data.get("phones", [])),
        "urls": list(data.get("urls", [])),
        "custom": {k: v for k, v in data.items() if _CUSTOM.match(k)},
        "date_created": now,
        "date_updated": now,
    }
    state.emails.add(contact_id, state.emails_of(contact_id))
    return contact_id


def contact_view(state: SandboxState, contact_id: str) -> dict[str, Any]:
    c = state.contacts[contact_id]
    emails = [{**e, "email_lower": e["email"].lower()} for e in c["emails"]]
    phones = []
    for p in c["phones"]:
        number = phonenumbers.parse(p["phone"], None)
        phones.append(
            {
                **p,
                "phone_formatted": phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
                "country": phonenumbers.region_code_for_country_code(number.country_code or 0),
            }
        )  # 0: unknown, "ZZ"
    return {
        "id": contact_id,
        "lead_id": c["lead_id"],
        "name": c["name"],
        "display_name": c["name"] or "",
        "title": c["title"],
        "emails": emails,
        "phones": phones,
        "urls": c["urls"],
        **c["custom"],
        "date_created": c["date_created"],
        "date_updated": c["date_updated"],
    }


def lead_view(state: SandboxState, lead_id: str, fields: list[str] | None = None) -> dict[str, Any]:
    lead = state.leads[lead_id]
    contacts = [contact_view(state, c) for c in lead["contact_ids"]]
    display = lead["name"] or next((c["name"] for c in contacts if c["name"]), "") or ""
    view = {
        "id": lead_id,
        "name": lead["name"],
        "display_name": display,
        "description": lead["description"],
        "url": lead["url"],
        "status_id": "stat_sandbox_potential",
        "status_label": "Potential",
        "contacts": contacts,
        "addresses": lead["addresses"],
        **lead["custom"],
        "date_created": lead["date_created"],
        "date_updated": lead["date_updated"],
    }
    if fields is None:
        return view
    return {"__object_type": "lead", **{k: view[k] for k in fields if k in view}}


# --------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------


def _require_api_key(request: web.Request) -> None:
    """Close takes the API key as the basic-auth username with an empty password."""
    credentials = basic_credentials(request)
    if credentials is not None:
        user, sep, password = credentials
        if sep and user == _state(request).config.api_key and password == "":
            return
    raise ApiError(401, {"error": "Unauthorized: the API key is missing or invalid."})


async def _json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(
            415, {"error": f"Unsupported media type {request.content_type or 'none'}; send application/json."}
        )
    try:
        return await json_body(request)
    except ValueError:
        raise ApiError(400, {"error": "The body is not valid JSON."}) from None


async def create_lead(request: web.Request) -> web.Response:
    """``POST /api/v1/lead/``: always a new lead — Close does not dedupe."""
    state = _state(request)
    body = await _json(request)
    check_lead(body)
    state.lead_seq += 1
    lead_id = f"{LEAD_PREFIX}{state.lead_seq:04d}"
    now = _iso(state.clock())
    state.leads[lead_id] = {
        "name": body.get("name"),
        "description": body.get("description"),
        "url": body.get("url"),
        "addresses": [{"label": "business", **a} for a in body.get("addresses", [])],
        "custom": {k: v for k, v in body.items() if _CUSTOM.match(k)},
        "contact_ids": [],
        "date_created": now,
        "date_updated": now,
    }
    for contact in body.get("contacts", []):
        state.leads[lead_id]["contact_ids"].append(_new_contact(state, lead_id, contact, now))
    state.creates += 1
    return json_response(lead_view(state, lead_id))


def _held(request: web.Request, table: Mapping[str, Any]) -> str:
    """The id in the URL, when ``table`` holds it; Close's 404 otherwise."""
    object_id = request.match_info["id"]
    if object_id not in table:
        raise ApiError(404, {"error": "Not found"})
    return object_id


async def get_lead(request: web.Request) -> web.Response:
    state = _state(request)
    return json_response(lead_view(state, _held(request, state.leads)))


async def get_contact(request: web.Request) -> web.Response:
    state = _state(request)
    return json_response(contact_view(state, _held(request, state.contacts)))


async def update_contact(request: web.Request) -> web.Response:
    """``PUT /api/v1/contact/{id}/``: sent fields replace stored ones, lists whole."""
    state = _state(request)
    contact_id = _held(request, state.contacts)
    body = await _json(request)
    check_contact_update(body)
    stored = state.contacts[contact_id]
    for name in ("name", "title"):
        if name in body:
            stored[name] = body[name]
    if "emails" in body:
        state.emails.drop(contact_id, state.emails_of(contact_id))
        stored["emails"] = _stored_emails(body["emails"])
        state.emails.add(contact_id, state.emails_of(contact_id))
    if "phones" in body:
        stored["phones"] = _stored_phones(body["phones"])
    if "urls" in body:
        stored["urls"] = list(body["urls"])
    stored["custom"].update({k: v for k, v in body.items() if _CUSTOM.match(k)})
    stored["date_updated"] = _iso(state.clock())
    state.updates += 1
    return json_response(contact_view(state, contact_id))


def _unsupported_query() -> ApiError:
    return ApiError(
        400,
        {
            "error": "This sandbox supports the lead-by-contact-email query only: an 'and' of "
            "object_type lead and has_related contact -> contact_email with a text "
            "condition on the field 'email'."
        },
    )


def _email_of_lead_query(query: Any) -> str:
    """Read the email out of the one Advanced Filtering query shape the fake supports."""
    try:
        assert query["type"] == "and"
        object_type, related = query["queries"]
        assert object_type == {"type": "object_type", "object_type": "lead"}
        assert related["type"] == "has_related" and related["this_object_type"] == "lead"
        assert related["related_object_type"] == "contact"
        inner = related["related_query"]
        assert inner["type"] == "has_related" and inner["this_object_type"] == "contact"
        assert inner["related_object_type"] == "contact_email"
        condition = inner["related_query"]
        assert condition["type"] == "field_condition"
        assert condition["field"] == {"type": "regular_field", "object_type": "contact_email", "field_name": "email"}
        assert condition["condition"]["type"] == "text"
        assert condition["condition"].get("mode", "full_words") in ("exact_value", "phrase", "full_words")
        value = condition["condition"]["value"]
        assert isinstance(value, str) and value
        return value
    except (AssertionError, KeyError, TypeError, ValueError):
        raise _unsupported_query() from None


async def search(request: web.Request) -> web.Response:
    """``POST /api/v1/data/search/``: leads having a contact with the email, oldest first."""
    state = _state(request)
    body = await _json(request)
    if not isinstance(body, dict):
        raise _unsupported_query()
    unknown = sorted(set(body) - {"query", "_fields", "_limit", "results_limit", "cursor", "sort", "include_counts"})
    if unknown:
        raise ApiError(400, {"error": f"Unknown search parameter {unknown[0]!r}."})
    email = _email_of_lead_query(body.get("query"))
    fields_spec = body.get("_fields")
    fields = None
    if fields_spec is not None:
        if not isinstance(fields_spec, dict) or not isinstance(fields_spec.get("lead"), list):
            raise ApiError(400, {"error": "_fields must map 'lead' to a list of field names."})
        fields = [str(f) for f in fields_spec["lead"]]
    limit = body.get("_limit", 100)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 200:
        raise ApiError(400, {"error": "_limit must be an integer from 1 to 200."})
    state.searches += 1
    matches = state.leads_with_email(email)[:limit]
    data = [lead_view(state, lead_id, fields if fields is not None else ["id"]) for lead_id in matches]
    return json_response({"data": data, "cursor": None})


protected = guarded(_require_api_key)


# --------------------------------------------------------------------------
# /api/v1 limits: endpoint groups, the ratelimit header, the 429
# --------------------------------------------------------------------------


def endpoint_group(request: web.Request) -> str:
    """Close counts limits per endpoint group: the resource and the method."""
    parts = [p for p in request.path[len(API_PREFIX) :].split("/") if p]
    resource = "/".join(p for p in parts if not re.match(r"^(lead|cont)_", p))
    return f"{request.method} {resource}"


def _ratelimit_header(quota: FixedWindowQuota, now: float) -> str:
    reset = quota.seconds_to_reset_exact(now)
    return f"limit={quota.quota}, remaining={quota.remaining()}, reset={math.ceil(reset)}"


def _rate_limited(quota: FixedWindowQuota, now: float) -> web.Response:
    """Close's 429: wait ``error.rate_reset`` seconds before calling this endpoint group again."""
    body = {
        "error": {
            "message": f"API call count exceeded for this {quota.window:g} second window",
            "rate_reset": round(max(quota.seconds_to_reset_exact(now), 0.001), 3),
            "rate_limit": quota.quota,
            "rate_window": quota.window,
            "rate_limit_type": "key",
        }
    }
    return json_response(body, status=429)


def _route_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    return json_response({"error": exc.reason}, status=exc.status)


def _admit(request: web.Request, state: SandboxState) -> Admission:
    """The endpoint group's budget; its ``ratelimit`` header goes on every answer."""
    now = state.clock()
    quota = state.quota_for(endpoint_group(request))
    return Admission(
        refused=None if quota.consume(now) else _rate_limited(quota, now),
        fault_response=lambda status: (
            _rate_limited(quota, now)
            if status == 429
            else json_response({"error": "Injected sandbox fault."}, status=status)
        ),
        headers=lambda: {"ratelimit": _ratelimit_header(quota, now)},
    )


# --------------------------------------------------------------------------
# App
# --------------------------------------------------------------------------


def create_app(config: SandboxConfig) -> web.Application:
    """The fake organisation; ``GET /_sandbox/state`` shows every lead held (with its contacts) and every answer."""
    app = create_sandbox_app(STATE_KEY, SandboxState(config), api_middleware(API_PREFIX, _state, _admit, _route_error))
    app.router.add_post("/api/v1/lead/", protected(create_lead))
    app.router.add_get("/api/v1/lead/{id}/", protected(get_lead))
    app.router.add_get("/api/v1/contact/{id}/", protected(get_contact))
    app.router.add_put("/api/v1/contact/{id}/", protected(update_contact))
    app.router.add_post("/api/v1/data/search/", protected(search))
    return app


async def start_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve in the running loop (port 0 picks a free port); returns the runner and the base URL."""
    return await start_app(create_app(config), host, port)


def build_parser() -> argparse.ArgumentParser:
    defaults = SandboxConfig()
    parser = sandbox_parser(
        "close", 8768, "Run a local fake of Close's leads, contacts and Advanced Filtering API (API-key basic auth)."
    )
    parser.add_argument(
        "--api-key",
        default=defaults.api_key,
        help="the API key the fake accepts as the basic-auth username (empty password)" + DEFAULT,
    )
    parser.add_argument(
        "--quota", type=int, default=defaults.quota, help="requests per window, per endpoint group" + DEFAULT
    )
    parser.add_argument("--window", type=float, default=defaults.window, help="rate-limit window, in seconds" + DEFAULT)
    add_fault_arguments(parser, defaults.fault_rate, defaults.fault_seed)
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(api_key=args.api_key, quota=args.quota, window=args.window, **fault_settings(args))


def _banner(args: argparse.Namespace, url: str) -> str:
    return f"Close sandbox listening on {url} (api_key={args.api_key}); press Ctrl-C to stop"


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``signal-engine sandbox close``; returns an exit code."""
    return run_sandbox("Close", build_parser(), argv, lambda args: create_app(config_from_args(args)), _banner)


if __name__ == "__main__":
    sys.exit(main())
