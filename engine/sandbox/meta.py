"""A local fake of Meta's Conversions API: ``POST /{version}/{pixel_id}/events`` with an ``access_token``.

It reproduces what a Conversions API integration has to handle
(``docs/vendors/meta.md``): the token in the ``access_token`` query parameter
(or form field), Graph's error envelope ``{"error": {"message", "type",
"code", "fbtrace_id"}}`` with HTTP 400 for every refusal, a wrong token as
``OAuthException`` code 190, an unknown pixel as code 100 subcode 33, a
``data`` array of at most 1,000 server events, each needing ``event_name``,
an integer ``event_time`` no older than seven days, ``action_source`` and
``user_data`` with at least one customer parameter, contact fields (``em``,
``ph``, ``fn`` …) accepted only as SHA-256 hex digests, and the whole request
refused when one event is invalid. It answers ``{"events_received": N,
"messages": [], "fbtrace_id": …}`` and keeps the events, de-duplicated by
``event_name`` and ``event_id`` as Meta does within 48 hours; events sent
with a ``test_event_code`` are kept apart, as in the Test Events tab.

``--event-window-days 0`` lifts the seven-day age check, so old sample
events (the repository's examples) can be sent.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from .common import (
    DEFAULT,
    Admission,
    FaultedState,
    FixedWindowQuota,
    JsonError,
    add_fault_arguments,
    api_middleware,
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
    "Meta Conversions API: access_token query parameter, batches of up to 1,000 server events, "
    "SHA-256-only contact fields, OAuthException 190, event_id dedup and injected faults"
)

__all__ = ["STATE_KEY", "SandboxConfig", "SandboxState", "create_app", "main", "start_sandbox"]

API_PREFIX = "/v"
MAX_EVENTS = 1000  # "You can send up to 1,000 events in data"
DEDUP_SECONDS = 48 * 3600
FUTURE_SLACK_SECONDS = 60
ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)
# Customer information parameters that Meta accepts only hashed (SHA-256, lower-case hex).
HASHED = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
# The rest of user_data that counts as customer information (external_id may be hashed or not).
UNHASHED = (
    "external_id",
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
    "anon_id",
    "madid",
    "page_id",
    "page_scoped_user_id",
    "ctwa_clid",
    "ig_account_id",
    "ig_sid",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^v[0-9]+\.[0-9]+$")


@dataclass
class SandboxConfig:
    """Knobs for the fake: the token and pixels it knows, the event-age window, an hourly quota."""

    access_token: str = "sandbox-capi-token"
    pixel_ids: list[str] = field(default_factory=lambda: ["1234567890"])
    event_window_days: float = 7.0
    quota: int = 100000
    window: float = 3600.0
    faults: list[int | str] = field(default_factory=list)
    fault_rate: float = 0.0
    fault_seed: int | None = None


def _trace() -> str:
    return secrets.token_urlsafe(9)


def graph_error(
    message: str,
    kind: str,
    code: int,
    subcode: int | None = None,
    status: int = 400,
    user_title: str | None = None,
    user_msg: str | None = None,
    transient: bool = False,
) -> JsonError:
    """Graph's error envelope; the Conversions API answers every refusal with it."""
    error: dict[str, Any] = {"message": message, "type": kind, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["is_transient"] = transient
    if user_title:
        error["error_user_title"] = user_title
    if user_msg:
        error["error_user_msg"] = user_msg
    error["fbtrace_id"] = _trace()
    headers = {"WWW-Authenticate": f'OAuth "Facebook Platform" "invalid_token" "{message}"'} if code == 190 else None
    return JsonError(status, {"error": error}, headers)


def invalid_parameter(index: int, title: str, detail: str) -> JsonError:
    """Code 100 naming the event: Meta refuses the whole request for one bad event."""
    return graph_error(
        "Invalid parameter",
        "OAuthException",
        100,
        2804003 if "event_time" in detail else 2804019,
        user_title=title,
        user_msg=f"{detail} (event {index} of data)",
    )


class SandboxState(FaultedState):
    """Everything the fake pixel remembers; lives on the aiohttp app. ``clock`` is epoch seconds."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.time) -> None:
        if not 0.0 <= config.fault_rate <= 1.0:
            raise ValueError("fault_rate must be between 0 and 1")
        if not config.access_token:
            raise ValueError("access_token must not be empty")
        if config.event_window_days < 0 or config.quota < 0 or config.window <= 0:
            raise ValueError("event_window_days and quota must be >= 0 and window must be > 0")
        self.config = config
        self.clock = clock
        self.initial_faults = [parse_fault(spec) for spec in config.faults]
        self.reset()

    def reset(self) -> None:
        """No events, a full quota and the start-up faults."""
        self.events: list[dict[str, Any]] = []
        self.test_events: list[dict[str, Any]] = []
        self.seen: dict[tuple[str, str, str], float] = {}
        self.duplicates = 0
        self.requests_accepted = 0
        self.batch_sizes: list[int] = []
        self.statuses: list[int | str] = []
        self.requests: list[dict[str, Any]] = []
        self.reset_faults()
        self.quota = FixedWindowQuota(self.config.quota, self.config.window)

    def snapshot(self) -> dict[str, Any]:
        return {
            "events": list(self.events),
            "test_events": list(self.test_events),
            "duplicates": self.duplicates,
            "batch_sizes": list(self.batch_sizes),
            "statuses": list(self.statuses),
            "requests_by_status": requests_by_status(self.statuses),
            "requests": list(self.requests),
            **fault_view(self),
        }


STATE_KEY = web.AppKey("meta_sandbox_state", SandboxState)


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


# --------------------------------------------------------------------------
# Guards: the token, the path, the body
# --------------------------------------------------------------------------


async def _form(request: web.Request) -> dict[str, str]:
    """The form fields of a form-encoded body (Meta's SDKs post ``data`` as a JSON string)."""
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    return dict(parse_qsl(await request.text(), keep_blank_values=True))


def _require_token(request: web.Request) -> None:
    """Graph reads the token from the ``access_token`` parameter (or a Bearer header)."""
    token = request.query.get("access_token")
    header = request.headers.get("Authorization", "")
    if token is None and header.lower().startswith("bearer "):
        token = header[7:].strip()
    if token is None and request.content_type == "application/x-www-form-urlencoded":
        return  # checked once the form is read, in the route
    _check_token(_state(request), token)


def _check_token(state: SandboxState, token: str | None) -> None:
    if not token:
        raise graph_error("An access token is required to request this resource.", "OAuthException", 104)
    if token != state.config.access_token:
        raise graph_error("Invalid OAuth access token - Cannot parse access token", "OAuthException", 190)


def _pixel(request: web.Request) -> str:
    version, pixel = request.match_info["version"], request.match_info["pixel"]
    if not _VERSION.match(version):
        raise graph_error(f"Unknown path components: /{version}", "OAuthException", 2500)
    if pixel not in _state(request).config.pixel_ids:
        raise graph_error(
            f"Unsupported post request. Object with ID '{pixel}' does not exist, cannot be loaded due "
            "to missing permissions, or does not support this operation. Please read the Graph API "
            "documentation at https://developers.facebook.com/docs/graph-api",
            "GraphMethodException",
            100,
            33,
        )
    return pixel


async def _body(request: web.Request) -> dict[str, Any]:
    """JSON, or a form whose ``data`` is a JSON string."""
    form = await _form(request)
    if form or request.content_type == "application/x-www-form-urlencoded":
        if "access_token" in form and "access_token" not in request.query:
            _check_token(_state(request), form["access_token"])
        elif "access_token" not in request.query:
            _check_token(_state(request), None)
        try:
            data = json.loads(form["data"]) if "data" in form else None
        except ValueError:
            raise graph_error("(#100) param data must be an array.", "OAuthException", 100) from None
        return {"data": data, **({"test_event_code": form["test_event_code"]} if "test_event_code" in form else {})}
    try:
        body = await json_body(request)
    except ValueError:
        raise graph_error("(#100) The request body is not valid JSON.", "OAuthException", 100) from None
    if not isinstance(body, dict):
        raise graph_error("(#100) The request body must be an object.", "OAuthException", 100)
    return body


def _check_event(state: SandboxState, index: int, event: Any) -> None:
    """One server event as Meta validates it; any problem refuses the whole request."""
    if not isinstance(event, dict):
        raise invalid_parameter(index, "Invalid event", "each item of data must be an object")
    name = event.get("event_name")
    if not isinstance(name, str) or not name:
        raise invalid_parameter(index, "Missing event_name", "The parameter event_name is required")
    when = event.get("event_time")
    if not isinstance(when, int) or isinstance(when, bool):
        raise invalid_parameter(index, "Invalid event_time", "The parameter event_time must be a Unix time in seconds")
    now = state.clock()
    window = state.config.event_window_days * 86400
    if window and when < now - window:
        raise invalid_parameter(
            index,
            "Event Timestamp Too Old",
            "The timestamp for this event (event_time) is more than 7 days in the past",
        )
    if when > now + FUTURE_SLACK_SECONDS:
        raise invalid_parameter(
            index, "Event Timestamp In The Future", "The timestamp for this event (event_time) is in the future"
        )
    source = event.get("action_source")
    if source not in ACTION_SOURCES:
        raise invalid_parameter(
            index,
            "Invalid action_source",
            "The parameter action_source is required and must be one of " + ", ".join(sorted(ACTION_SOURCES)),
        )
    if source == "website" and not event.get("event_source_url"):
        raise invalid_parameter(
            index, "Missing event_source_url", "event_source_url is required for events with action_source website"
        )
    _check_user_data(index, event.get("user_data"), source)


def _check_user_data(index: int, user_data: Any, source: str) -> None:
    if not isinstance(user_data, dict):
        raise invalid_parameter(index, "Missing user_data", "The parameter user_data is required")
    for key in HASHED:
        if key not in user_data:
            continue
        values = user_data[key] if isinstance(user_data[key], list) else [user_data[key]]
        for value in values:
            if not isinstance(value, str) or not _SHA256.match(value):
                raise invalid_parameter(
                    index,
                    "Unhashed customer information",
                    f"user_data.{key} must be the SHA-256 of the normalised value "
                    "(64 lower-case hex characters); unhashed contact information is not accepted",
                )
    if not any(user_data.get(key) for key in HASHED + UNHASHED):
        raise invalid_parameter(
            index, "Missing customer information", "user_data needs at least one customer information parameter"
        )
    if source == "website" and not user_data.get("client_user_agent"):
        raise invalid_parameter(
            index, "Missing client_user_agent", "client_user_agent is required for events with action_source website"
        )


# --------------------------------------------------------------------------
# The events edge
# --------------------------------------------------------------------------


async def post_events(request: web.Request) -> web.Response:
    """``POST /{version}/{pixel_id}/events``: all events accepted, or none."""
    state = _state(request)
    pixel = _pixel(request)
    body = await _body(request)
    data = body.get("data")
    if data is None:
        raise graph_error("(#100) The parameter data is required", "OAuthException", 100)
    if not isinstance(data, list) or not data:
        raise graph_error("(#100) param data must be a non-empty array.", "OAuthException", 100)
    if len(data) > MAX_EVENTS:
        raise graph_error(
            f"(#100) param data must be an array of maximum {MAX_EVENTS} elements.", "OAuthException", 100
        )
    test_code = body.get("test_event_code")
    if test_code is not None and (not isinstance(test_code, str) or not test_code):
        raise graph_error("(#100) param test_event_code must be a non-empty string.", "OAuthException", 100)
    for index, event in enumerate(data):
        _check_event(state, index, event)
    now = state.clock()
    kept = state.test_events if test_code else state.events
    for event in data:
        event_id = event.get("event_id")
        if isinstance(event_id, str) and event_id:
            key = (pixel, event["event_name"], event_id)
            first = state.seen.get(key)
            if first is not None and now - first < DEDUP_SECONDS:
                state.duplicates += 1
                continue
            state.seen[key] = now
        kept.append({"pixel_id": pixel, **({"test_event_code": test_code} if test_code else {}), **event})
    state.batch_sizes.append(len(data))
    return json_response({"events_received": len(data), "messages": [], "fbtrace_id": _trace()})


protected = guarded(_require_token)


def _fault_response(status: int) -> web.Response:
    if status == 429 or status == 400:
        return graph_error(
            "(#4) Application request limit reached", "OAuthException", 4, transient=True, status=status
        ).response()
    return graph_error(
        "An unexpected error has occurred. Please retry your request later.",
        "OAuthException",
        2,
        transient=True,
        status=status,
    ).response()


def _route_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    return graph_error(
        f"Unsupported {request.method.lower()} request.",
        "GraphMethodException",
        100,
        status=exc.status if exc.status != 405 else 400,
    ).response()


def _admit(request: web.Request, state: SandboxState) -> Admission:
    """An app-level request budget; past it, Graph's code 4 (as HTTP 400, as Meta answers it)."""
    state.requests.append(
        {
            "method": request.method,
            "path": request.path,
            "query": "&".join(k + "=" + ("***" if k == "access_token" else v) for k, v in request.query.items()),
        }
    )
    refused = None
    if not state.quota.consume(state.clock()):
        refused = graph_error("(#4) Application request limit reached", "OAuthException", 4, transient=True).response()
    return Admission(refused, _fault_response, dict)


# --------------------------------------------------------------------------
# App
# --------------------------------------------------------------------------


def create_app(config: SandboxConfig) -> web.Application:
    """The fake pixel; ``POST /_sandbox/reset`` forgets every event."""
    state = SandboxState(config)
    app = create_sandbox_app(
        STATE_KEY, state, api_middleware(API_PREFIX, _state, _admit, _route_error, log_requests=False)
    )
    app.router.add_post("/{version}/{pixel}/events", protected(post_events))
    return app


async def start_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve in the running loop (port 0 picks a free port); returns the runner and the base URL."""
    return await start_app(create_app(config), host, port)


def build_parser() -> argparse.ArgumentParser:
    defaults = SandboxConfig()
    parser = sandbox_parser("meta", 8769, "Run a local fake of Meta's Conversions API (access_token auth).")
    parser.add_argument(
        "--access-token",
        default=defaults.access_token,
        help="the access token the fake accepts in the access_token parameter" + DEFAULT,
    )
    parser.add_argument(
        "--pixel-id",
        action="append",
        default=None,
        dest="pixel_ids",
        help="a pixel (dataset) id the fake knows; repeat it for several (default: 1234567890)",
    )
    parser.add_argument(
        "--event-window-days",
        type=float,
        default=defaults.event_window_days,
        help="refuse events older than this many days; 0 accepts any age" + DEFAULT,
    )
    parser.add_argument("--quota", type=int, default=defaults.quota, help="requests per window" + DEFAULT)
    parser.add_argument("--window", type=float, default=defaults.window, help="quota window in seconds" + DEFAULT)
    add_fault_arguments(parser, defaults.fault_rate, defaults.fault_seed)
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        access_token=args.access_token,
        pixel_ids=list(args.pixel_ids or ["1234567890"]),
        event_window_days=args.event_window_days,
        quota=args.quota,
        window=args.window,
        **fault_settings(args),
    )


def _banner(args: argparse.Namespace, url: str) -> str:
    pixels = ", ".join(args.pixel_ids or ["1234567890"])
    return f"Meta Conversions API sandbox listening on {url} (pixel {pixels}); press Ctrl-C to stop"


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``signal-engine sandbox meta``; returns an exit code."""
    return run_sandbox("Meta", build_parser(), argv, lambda args: create_app(config_from_args(args)), _banner)


if __name__ == "__main__":
    sys.exit(main())
