"""What every auth kind shares: one interface.

A kind only decides *which* credential to send (a static token, a key, a
base64 pair, a minted access token); where it goes and how it is masked is
the same for all kinds (:mod:`engine.envelope`).
"""

from __future__ import annotations

from typing import Any, Protocol

from ...envelope import apply_credential, masked_view
from ...language.model import AuthSpec


class AuthFailure(Exception):
    """No credential could be had. ``fatal`` means a person must act (re-authorise)."""

    def __init__(self, message: str, *, fatal: bool, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.status = status
        self.body = body

    def again(self) -> AuthFailure:
        """A fresh copy, to raise for the next caller of a failure that is remembered.

        Raising one object again and again chains each raise's traceback onto
        the last, and every frame in it (each event's request) stays alive:
        a run grew by kilobytes per event while its credential was refused.
        """
        return AuthFailure(str(self), fatal=self.fatal, status=self.status, body=self.body)


class Auth(Protocol):
    """One connection's credentials. ``credential`` may do I/O (minting); the rest is pure."""

    spec: AuthSpec
    mints: int

    async def credential(self) -> str:
        """The secret to place on the next request."""

    async def refresh(self, rejected: str) -> bool:
        """After a 401: obtain a credential other than ``rejected``; False when this kind cannot."""


__all__ = ["Auth", "AuthFailure", "apply_credential", "masked_view"]
