"""The token half of the fakes' OAuth servers: issuing tokens, the token answer, bearer checks.

Outreach and Salesloft both hand out random refresh and access tokens at
``POST /oauth/token`` and answer it in RFC 6749 §5's shapes; what differs
(rotation rules, throttles, error wording) stays with each vendor's fake.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from .common import bearer_token, json_body, json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenIssuer:
    """Refresh tokens and expiring access tokens, held by a sandbox state.

    A subclass keeps ``refresh_tokens`` (a set), ``access_tokens`` (token to
    expiry, epoch seconds), ``clock`` and a ``config`` with ``token_ttl``.
    """

    config: Any
    refresh_tokens: set[str]
    access_tokens: dict[str, float]

    def issue_tokens(self, now: float) -> tuple[str, str]:
        """A new (access token, refresh token) pair; the access token lives ``token_ttl`` seconds."""
        refresh_token = secrets.token_urlsafe(32)
        access_token = secrets.token_urlsafe(32)
        self.refresh_tokens.add(refresh_token)
        self.access_tokens[access_token] = now + self.config.token_ttl
        return access_token, refresh_token

    def access_token_valid(self, token: str, now: float) -> bool:
        return self.access_tokens.get(token, 0.0) > now

    def expire_access_tokens(self) -> int:
        """Make every access token stale; returns how many there were."""
        count = len(self.access_tokens)
        self.access_tokens.clear()
        return count


def expire_tokens_handler(get_state: Callable[[web.Request], TokenIssuer]) -> Handler:
    """``POST /_sandbox/expire-tokens``: make every access token stale, to test refresh-on-401."""

    async def admin_expire_tokens(request: web.Request) -> web.Response:
        return json_response({"expired": get_state(request).expire_access_tokens()})

    return admin_expire_tokens


def holds_valid_bearer(request: web.Request, state: Any) -> bool:
    """Whether the request's ``Authorization: Bearer`` token is a current access token of ``state``."""
    token = bearer_token(request)
    return token is not None and state.access_token_valid(token, state.clock())


def token_response(access_token: str, refresh_token: str, expires_in: int, scope: str, now: float) -> web.Response:
    """A successful token answer (RFC 6749 §5.1), with the ``created_at`` both vendors add."""
    return json_response(
        {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": expires_in,
            "refresh_token": refresh_token,
            "scope": scope,
            "created_at": int(now),
        }
    )


def oauth_error(status: int, error: str, description: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """A token-endpoint error in RFC 6749 §5.2's shape."""
    body = {"error": error, "error_description": description}
    return json_response(body, status=status, headers=dict(headers or {}))


async def read_token_params(request: web.Request) -> dict[str, Any]:
    """A token request's parameters, sent as a form or as JSON; a body that is not a JSON object has none."""
    if request.content_type == "application/json":
        try:
            body = await json_body(request)
        except ValueError:
            return {}
        return dict(body) if isinstance(body, dict) else {}
    return dict(await request.post())
