"""Integrations created in the console, kept in the state store (not in an integrations file).

An integrations file is committed and read-only to the console; an
integration a person sets up in the console lives here instead: its preset,
its plain settings, and its secret settings sealed with Fernet
(:class:`SecretBox`), so a copy of ``state.db`` or a Redis dump does not
hand out credentials. The key comes from the environment
(``SIGNAL_CONSOLE_SECRET_KEY``); without it nothing secret is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

KEY_ENV = "SIGNAL_CONSOLE_SECRET_KEY"


@dataclass(frozen=True)
class StoredIntegration:
    """One console-made integration as stored: ``sealed`` holds Fernet tokens, never a secret in the clear."""

    name: str
    preset: str
    values: Mapping[str, Any] = field(default_factory=dict)
    sealed: Mapping[str, str] = field(default_factory=dict)
    saved_at: float = 0.0

    def __repr__(self) -> str:
        return f"StoredIntegration({self.name!r}, preset={self.preset!r}, secrets={sorted(self.sealed)})"

    def to_doc(self) -> str:
        return json.dumps({"values": dict(self.values), "sealed": dict(self.sealed)}, sort_keys=True)

    @classmethod
    def from_doc(cls, name: str, preset: str, doc: str, saved_at: float) -> StoredIntegration:
        data = json.loads(doc)
        return cls(name, preset, data.get("values", {}), data.get("sealed", {}), saved_at)


class IntegrationStore(Protocol):
    """Where console-made integrations live (a table of ``state.db``, a Redis hash)."""

    def put(self, item: StoredIntegration) -> None: ...
    def get(self, name: str) -> StoredIntegration | None: ...
    def all(self) -> list[StoredIntegration]: ...
    def delete(self, name: str) -> bool: ...


class MemoryIntegrationStore:
    def __init__(self) -> None:
        self._items: dict[str, StoredIntegration] = {}

    def put(self, item: StoredIntegration) -> None:
        self._items[item.name] = item

    def get(self, name: str) -> StoredIntegration | None:
        return self._items.get(name)

    def all(self) -> list[StoredIntegration]:
        return [self._items[n] for n in sorted(self._items)]

    def delete(self, name: str) -> bool:
        return self._items.pop(name, None) is not None


class SecretsUnavailable(Exception):
    """No usable key: the console will not store a secret (the message says why, for the page)."""


class SecretBox:
    """Fernet (AES-128-CBC with an HMAC-SHA256, from ``cryptography``) with the console's key.

    A well-kept library rather than our own construction: authenticated
    encryption is easy to get subtly wrong.
    """

    def __init__(self, key: str) -> None:
        from cryptography.fernet import Fernet

        try:
            self._fernet = Fernet(key.encode())
        except (ValueError, TypeError):
            raise SecretsUnavailable(
                f"{KEY_ENV} is not a Fernet key (32 url-safe base64-encoded bytes; make one "
                'with: python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())")'
            ) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SecretBox:
        key = environ.get(KEY_ENV, "").strip()
        if not key:
            raise SecretsUnavailable(
                f"{KEY_ENV} is not set, so the console cannot encrypt secrets and will not "
                "store them; set it to a Fernet key and restart the console"
            )
        return cls(key)

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def open(self, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable(
                f"a stored secret does not open with this {KEY_ENV} (was the key changed?)"
            ) from None


def now() -> float:
    return time.time()


__all__ = [
    "KEY_ENV",
    "IntegrationStore",
    "MemoryIntegrationStore",
    "SecretBox",
    "SecretsUnavailable",
    "StoredIntegration",
]
