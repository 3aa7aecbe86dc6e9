"""Keeps secrets out of everything a person or a log can see.

Secrets are masked structurally where the engine knows them (the auth
header) and, as a second line of defence, by value: every string that
leaves through an outcome, a log line, a dead letter or an error message
passes through :meth:`Redactor.redact`, which replaces any known secret —
client secret, refresh tokens (old and rotated), access tokens.
"""

from __future__ import annotations

from typing import Any

MASK = "***"


class Redactor:
    """The set of secret strings known to one engine; grows as tokens are minted."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets: set[str] = set()
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        # Very short values would mask innocent text and are not real credentials.
        if isinstance(secret, str) and len(secret) >= 6:
            self._secrets.add(secret)

    def redact(self, value: Any) -> Any:
        if not self._secrets:
            return value
        if isinstance(value, str):
            for secret in sorted(self._secrets, key=len, reverse=True):
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {self.redact(k): self.redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value
