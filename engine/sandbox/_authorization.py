"""The authorization half of an OAuth 2 server, for fakes whose vendor uses the code grant.

A person opens ``GET /oauth/authorize?client_id&redirect_uri&response_type=code&scope&state``,
approves, and is redirected back with a one-time ``code`` that the token
endpoint trades for tokens (RFC 6749 §4.1). A fake cannot ask a person, so
it decides as configured: ``approve`` (the tests' "auto-approve") or
``deny`` (``error=access_denied``).

What it checks, in RFC 6749's order:

* an unknown ``client_id`` or an unregistered ``redirect_uri`` is answered
  with a 400 page and **no** redirect (§4.1.2.1: never send a code to a URI
  the app did not register). A loopback IP redirect URI matches a registered
  one whatever its port (RFC 8252 §7.3), so a command-line client may listen
  on any free port;
* a wrong ``response_type`` or a scope the app was not given is redirected
  back as ``error=unsupported_response_type`` / ``invalid_scope``;
* codes are random, single-use and short-lived; the exchange must name the
  same client and the same ``redirect_uri`` (§4.1.3), else ``invalid_grant``.
  A code presented twice stays refused (§4.1.2);
* ``echo`` names parameters a vendor adds to the redirect and wants back in
  the exchange (Salesloft: ``context`` and ``scope``); the fake requires them,
  the stricter reading of docs that list them.
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

from .common import DEFAULT

CONSENT_CHOICES = ("approve", "deny")


@dataclass(frozen=True)
class IssuedCode:
    client_id: str
    redirect_uri: str
    scope: str
    expires_at: float
    echo: tuple[tuple[str, str], ...] = ()


@dataclass
class AuthorizationServer:
    """The app's registration (client id, redirect URIs, scopes), the consent to give, and the codes issued."""

    client_id: str
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]  # what the app may ask for; empty: the request carries no scope
    consent: str = "approve"
    code_ttl: float = 600.0
    echo: tuple[str, ...] = ()
    codes: dict[str, IssuedCode] = field(default_factory=dict)
    spent: set[str] = field(default_factory=set)
    issued: int = 0
    exchanged: int = 0

    def __post_init__(self) -> None:
        if self.consent not in CONSENT_CHOICES:
            raise ValueError(f"consent must be one of {', '.join(CONSENT_CHOICES)}")
        if self.code_ttl <= 0:
            raise ValueError("code_ttl must be > 0")

    def authorize(self, query: Mapping[str, str], now: float) -> web.Response:
        """Answer the person's browser: a redirect with a code or an error, or a page when redirecting is unsafe."""
        client_id = query.get("client_id", "")
        redirect_uri = query.get("redirect_uri", "")
        if client_id != self.client_id:
            return _page(400, "invalid_client", "Unknown client_id: no app is registered with this identifier.")
        if not redirect_uri or not any(_same_redirect(redirect_uri, r) for r in self.redirect_uris):
            return _page(
                400,
                "invalid_request",
                "The redirect_uri is missing or is not one of the app's registered "
                "redirect URIs, so the answer cannot be sent back.",
            )
        state = query.get("state")
        if query.get("response_type") != "code":
            return _redirect(
                redirect_uri,
                state,
                error="unsupported_response_type",
                error_description="Only response_type=code is supported.",
            )
        scope = " ".join(query.get("scope", "").split())
        if self.scopes:
            asked = scope.split()
            unknown = [s for s in asked if s not in self.scopes]
            if not asked or unknown:
                return _redirect(
                    redirect_uri,
                    state,
                    error="invalid_scope",
                    error_description=(
                        f"Scope {' '.join(unknown)} is not enabled for this app." if unknown else "A scope is required."
                    ),
                )
        if self.consent == "deny":
            return _redirect(
                redirect_uri,
                state,
                error="access_denied",
                error_description="The user denied the authorization request.",
            )
        code = secrets.token_urlsafe(24)
        echo = tuple((name, scope if name == "scope" else secrets.token_urlsafe(8)) for name in self.echo)
        self.codes[code] = IssuedCode(client_id, redirect_uri, scope, now + self.code_ttl, echo)
        self.issued += 1
        return _redirect(redirect_uri, state, code=code, **dict(echo))

    def redeem(self, params: Mapping[str, Any], now: float) -> IssuedCode | str:
        """The code's grant, or why it is refused (an ``invalid_grant`` description). A code is spent by any attempt."""
        code = params.get("code")
        if not isinstance(code, str) or not code:
            return "The authorization code is missing."
        issued = self.codes.pop(code, None)
        if issued is None:
            return (
                "The authorization code was already used."
                if code in self.spent
                else "The authorization code is invalid."
            )
        self.spent.add(code)
        if issued.expires_at <= now:
            return "The authorization code has expired."
        if issued.client_id != params.get("client_id"):
            return "The authorization code was issued to another client."
        if issued.redirect_uri != params.get("redirect_uri"):
            return "The redirect_uri does not match the one used in the authorization request."
        for name, value in issued.echo:
            if params.get(name) != value:
                return f"The {name} parameter does not match the authorization redirect."
        self.exchanged += 1
        return issued


def _same_redirect(asked: str, registered: str) -> bool:
    """Equal, or both http loopback IP literals that differ only in the port (RFC 8252 §7.3)."""
    if asked == registered:
        return True
    a, r = urlsplit(asked), urlsplit(registered)
    if (
        a.fragment
        or a.scheme != "http"
        or r.scheme != "http"
        or not _loopback_ip(a.hostname)
        or a.hostname != r.hostname
    ):
        return False
    return (a.path, a.query) == (r.path, r.query)


def _loopback_ip(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "localhost" is a name, not the IP literal RFC 8252 §7.3 speaks of


def _redirect(redirect_uri: str, state: str | None, **params: str) -> web.Response:
    """302 back to the app; its own query is kept and ``state`` echoed (RFC 6749 §3.1.2, §4.1.2)."""
    parts = urlsplit(redirect_uri)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    if state is not None:
        query.append(("state", state))
    location = urlunsplit(parts._replace(query=urlencode(query)))
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _page(status: int, error: str, text: str) -> web.Response:
    body = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(error)}</title></head>'
        f"<body><h1>{html.escape(error)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html")


# --------------------------------------------------------------------------
# What the fakes with an authorize step share
# --------------------------------------------------------------------------


def authorize_handler(get_state: Callable[[web.Request], Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /oauth/authorize``, answered by the state's ``authorization`` server at the state's clock."""

    async def authorize_endpoint(request: web.Request) -> web.Response:
        state = get_state(request)
        query = {key: request.query.getone(key) for key in request.query}
        return state.authorization.authorize(query, state.clock())

    return authorize_endpoint


def add_authorize_arguments(
    parser: argparse.ArgumentParser, consent: str, redirect_uris: list[str], code_ttl: float
) -> None:
    """The options of the authorize step, with the same spelling and help in every fake that has one."""
    parser.add_argument(
        "--consent",
        choices=CONSENT_CHOICES,
        default=consent,
        help="what the person decides at /oauth/authorize: approve (redirect with a code) or deny "
        "(error=access_denied)" + DEFAULT,
    )
    parser.add_argument(
        "--redirect-uri",
        action="append",
        default=None,
        metavar="URI",
        help="a redirect URI registered for the app (repeatable); a loopback one accepts any port "
        f"(default: {' '.join(redirect_uris)})",
    )
    parser.add_argument(
        "--code-ttl", type=float, default=code_ttl, help="authorization code lifetime, in seconds" + DEFAULT
    )


def authorize_settings(args: argparse.Namespace, redirect_uris: list[str]) -> dict[str, Any]:
    """The config fields the options of :func:`add_authorize_arguments` set; ``redirect_uris`` when none is given."""
    return {
        "consent": args.consent,
        "redirect_uris": list(args.redirect_uri or redirect_uris),
        "code_ttl": args.code_ttl,
    }
