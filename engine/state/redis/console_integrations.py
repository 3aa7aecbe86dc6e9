"""Console-made integrations in one Redis hash (``<prefix>:console:integrations``): field = name, secrets sealed."""

from __future__ import annotations

import json
from typing import Any

from ..console_integrations import StoredIntegration
from .keys import Keys, decoded


class RedisIntegrationStore:
    def __init__(self, client: Any, keys: Keys) -> None:
        self.client = client
        self.key = f"{keys.prefix}:console:integrations"

    def put(self, item: StoredIntegration) -> None:
        self.client.hset(
            self.key, item.name, json.dumps({"preset": item.preset, "doc": item.to_doc(), "saved_at": item.saved_at})
        )

    def get(self, name: str) -> StoredIntegration | None:
        raw = self.client.hget(self.key, name)
        return None if raw is None else _item(name, raw)

    def all(self) -> list[StoredIntegration]:
        found = self.client.hgetall(self.key)
        return sorted((_item(decoded(k), v) for k, v in found.items()), key=lambda i: i.name)

    def delete(self, name: str) -> bool:
        """Remove one; True when it was there (its tokens, letters and records stay, under its name)."""
        return bool(self.client.hdel(self.key, name))


def _item(name: str, raw: bytes | str) -> StoredIntegration:
    data = json.loads(decoded(raw))
    return StoredIntegration.from_doc(name, data["preset"], data["doc"], float(data["saved_at"]))
