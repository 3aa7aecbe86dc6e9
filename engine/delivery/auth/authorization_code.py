"""The OAuth 2 authorization code grant (RFC 6749 §4.1), done once by a person.

A refresh-token connection has to start somewhere: a person signs in at the
destination and approves the app, the destination redirects their browser
back with a one-time code, and the code is exchanged for the first refresh
and access tokens. This module holds the two halves that are pure protocol:
building the authorization URL (what the preset declares, plus ``state``)
and exchanging the code at the token endpoint. Listening for the redirect
and asking the person are the command line's part.

The tokens are stored like a rotated refresh token (:mod:`engine.state`):
the access token too, so the first run after the authorisation does not
mint again (destinations throttle minting).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...language.model import AuthSpec
from ...language.settings import Settings
from ...loggers import package_logger
from ...redaction import Redactor
from ...state.token_store import AUTHORISED_CHAIN, StoredTokens, TokenStore
from ..transport import Transport, TransportError
from .oauth2 import answer_values, store_lock, token_endpoint_request

log = package_logger(__name__)

# Error descriptions come from the destination; a long one would not be one line.
MAX_DESCRIPTION_CHARS = 300


class AuthorisationError(Exception):
    """The authorisation did not complete; the message is one line, safe to show (no secret in it)."""


@dataclass(frozen=True)
class Client:
    """What identifies the app to the destination, from the settings the preset names."""

    client_id: str
    client_secret: str

    @classmethod
    def of(cls, spec: AuthSpec, settings: Settings) -> Client:
        return cls(
            str(settings[spec.client_id_setting or ""] or ""), str(settings[spec.client_secret_setting or ""] or "")
        )


def can_authorise(spec: AuthSpec | None) -> str | None:
    """Why a person cannot authorise this preset's connection, or None when they can."""
    if spec is None:
        return "its auth is none: there is nothing to authorise"
    if spec.type != "oauth2_refresh_token":
        return (
            f"its auth is {spec.type}, which needs no authorisation by a person "
            "(the credentials in the settings are enough)"
        )
    if spec.authorize_url is None:
        return "its auth declares no authorize_url, so it cannot be authorised here"
    return None


def authorization_url(spec: AuthSpec, settings: Settings, redirect_uri: str, state: str) -> str:
    """The URL the person opens (RFC 6749 §4.1.1): the preset's ``authorize_url`` plus the request parameters.

    ``scope`` is the preset's scopes joined by spaces (form-encoded as ``+``),
    and left out when the preset declares none (the app's own scopes apply).
    A query the preset's URL already has is kept.
    """
    assert spec.authorize_url is not None
    base = spec.authorize_url.render({"settings": settings.public()})
    params = {"client_id": Client.of(spec, settings).client_id, "redirect_uri": redirect_uri, "response_type": "code"}
    if spec.scopes:
        params["scope"] = " ".join(spec.scopes)
    params["state"] = state
    parts = urlsplit(base)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def exchange_code(
    spec: AuthSpec,
    settings: Settings,
    transport: Transport,
    code: str,
    redirect_uri: str,
    redactor: Redactor,
    *,
    echoed: Mapping[str, str] | None = None,
) -> StoredTokens:
    """Trade the code for the first tokens (RFC 6749 §4.1.3); raise :class:`AuthorisationError` when refused.

    ``redirect_uri`` must be the one the authorization request carried.
    ``echoed`` are other parameters of the redirect the preset says the
    exchange sends back. The code is single-use and short-lived, so nothing
    is retried: a person is there to run the command again.
    """
    client = Client.of(spec, settings)
    redactor.add(client.client_secret)
    redactor.add(code)
    url = spec.token_url.render({"settings": settings.public()}) if spec.token_url else ""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, **(echoed or {})}
    request = token_endpoint_request(spec, url, client.client_id, client.client_secret, form, redactor)
    try:
        response = await transport.send(request)
    except TransportError as exc:
        raise AuthorisationError(
            f"the token endpoint {url} could not be reached ({exc.kind}); run the command again"
        ) from None
    body = response.body
    if 200 <= response.status < 300 and isinstance(body, dict):
        access, refresh = body.get("access_token"), body.get("refresh_token")
        if isinstance(access, str) and access and isinstance(refresh, str) and refresh:
            redactor.add(access)
            redactor.add(refresh)
            lifetime = body.get("expires_in")
            expires = time.time() + float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else None
            return StoredTokens(refresh, access, expires, answer_values(spec, body) or {})
        missing = "refresh_token" if isinstance(access, str) and access else "access_token"
        raise AuthorisationError(
            f"the token endpoint answered {response.status} without a {missing}; the app cannot deliver without one"
        )
    raise AuthorisationError(redactor.redact(_refusal(response.status, body)))


def _refusal(status: int, body: Any) -> str:
    """One line for a refused exchange, with what a person should do about it (RFC 6749 §5.2 error codes)."""
    error = body.get("error") if isinstance(body, dict) else None
    description = body.get("error_description") if isinstance(body, dict) else None
    said = f" ({_one_line(str(description))})" if description else ""
    if error == "invalid_grant":
        return (
            f"the token endpoint refused the authorization code: invalid_grant{said}. Codes are single-use "
            "and expire within minutes, and the redirect URI must be the one authorised; run the command again"
        )
    if error == "invalid_client" or status == 401:
        return (
            f"the token endpoint refused the client credentials: {error or status}{said}; "
            "check client_id and client_secret in the settings"
        )
    if error:
        return f"the token endpoint refused the authorization code: {_one_line(str(error))}{said}"
    return f"the token endpoint answered {status} to the code exchange"


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_DESCRIPTION_CHARS else flat[: MAX_DESCRIPTION_CHARS - 1] + "…"


def refused_redirect(params: Mapping[str, str]) -> str:
    """One line for an error answered on the redirect (RFC 6749 §4.1.2.1), e.g. ``access_denied``."""
    error = _one_line(params.get("error", ""))
    description = params.get("error_description")
    said = f" ({_one_line(description)})" if description else ""
    if error == "access_denied":
        return f"the authorisation was denied (access_denied){said}; nothing was stored"
    return f"the destination refused the authorisation request: {error}{said}; nothing was stored"


async def store_tokens(store: TokenStore, tokens: StoredTokens, origin: str = AUTHORISED_CHAIN) -> bool:
    """Save the new chain under the refresh lock; True when it replaced an earlier authorisation.

    Holding the lock means no engine is refreshing at the moment, and every
    engine re-reads the chain under that lock before it refreshes, so a run
    under way adopts the new tokens instead of overwriting them.
    """
    # The code is spent: keeping the new tokens matters more than the lock.
    async with store_lock(store, "storing the new tokens without it"):
        earlier = store.load(origin)
        store.save(tokens, origin)
    return earlier is not None
