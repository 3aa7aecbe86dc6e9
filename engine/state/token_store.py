"""Where a rotating refresh token lives between runs.

A destination that rotates refresh tokens (Outreach, for one) invalidates a
refresh token the moment it is used, so losing the new one loses the
connection: a person has to re-authorise. The new token is therefore written
durably before the access token minted with it is used. The engine's default
store is a row in the state database (:mod:`engine.state.sqlite.tokens`);
hosts with a secrets manager implement :class:`TokenStore`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

# The origin of a token chain that began with an authorization code (a person
# authorised the app with ``signal-engine auth``) rather than with a refresh
# token written in the settings. An engine whose settings name no refresh
# token continues this chain. No refresh token can equal it: tokens are
# printable characters (RFC 6749, appendix A), and this starts with NUL.
AUTHORISED_CHAIN = "\x00authorization_code"


def fingerprint(token: str) -> str:
    """A short one-way tag that tells whether the configured token changed, without storing it twice."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


@dataclass
class StoredTokens:
    """What survives a restart: the rotated refresh token and, while it lives, the access token.

    Keeping the access token too means a short CLI run does not mint a new
    one each time; minting is throttled upstream to about one a minute.
    """

    refresh_token: str
    access_token: str | None = None
    access_expires_at: float | None = None  # epoch seconds
    # The token answer's non-secret values a preset reads (auth.token_values), from the same answer
    # as the access token: a restart that reuses the token must also know where to send it.
    values: dict[str, str] = field(default_factory=dict)


def values_text(values: dict[str, str]) -> str | None:
    """The token values as a store keeps them (None when there are none)."""
    return json.dumps(values, sort_keys=True) if values else None


def values_from_text(text: Any) -> dict[str, str]:
    """The token values back from a store; anything unreadable is no values (the next mint brings them)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str) or not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


class TokenStore(Protocol):
    """Required: ``load`` and ``save``. Optional, looked up by name when present:

    * ``try_lock() -> bool`` / ``unlock()``: a lock shared by every process
      using the store, held while one of them refreshes (two refreshes with
      one rotating token would lose the connection);
    * ``check_writable() -> bool``: can ``save`` succeed right now? Asked
      before a refresh spends the current refresh token, so a full disk
      never turns into a rotated token that cannot be kept.
    """

    def load(self, configured: str) -> StoredTokens | None:
        """What was stored for the chain that starts at ``configured``, or None to start from it."""

    def save(self, tokens: StoredTokens, configured: str) -> None:
        """Persist ``tokens`` durably before returning; raise ``OSError`` when that is impossible."""


class MemoryTokenStore:
    """For tests and hosts that persist nothing (rotation then lasts one process)."""

    def __init__(self) -> None:
        self._tokens: StoredTokens | None = None
        self._origin: str | None = None

    def load(self, configured: str) -> StoredTokens | None:
        return self._tokens if self._origin == fingerprint(configured) else None

    def save(self, tokens: StoredTokens, configured: str) -> None:
        self._tokens, self._origin = tokens, fingerprint(configured)
