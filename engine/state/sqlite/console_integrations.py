"""Console-made integrations in ``state.db`` (table ``console_integrations``): one row each, secrets sealed."""

from __future__ import annotations

from ..console_integrations import StoredIntegration
from .database import Database


class SqliteIntegrationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def put(self, item: StoredIntegration) -> None:
        with self.db.write(durable=True) as cur:
            cur.execute(
                "INSERT INTO console_integrations (name, preset, doc, saved_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET preset = excluded.preset, doc = excluded.doc, "
                "saved_at = excluded.saved_at",
                (item.name, item.preset, item.to_doc(), item.saved_at),
            )

    def get(self, name: str) -> StoredIntegration | None:
        rows = self.db.read("SELECT name, preset, doc, saved_at FROM console_integrations WHERE name = ?", (name,))
        return StoredIntegration.from_doc(*rows[0]) if rows else None

    def all(self) -> list[StoredIntegration]:
        rows = self.db.read("SELECT name, preset, doc, saved_at FROM console_integrations ORDER BY name")
        return [StoredIntegration.from_doc(*row) for row in rows]

    def delete(self, name: str) -> bool:
        """Remove one; True when it was there (its tokens, letters and records stay, under its name)."""
        with self.db.write(durable=True) as cur:
            cur.execute("DELETE FROM console_integrations WHERE name = ?", (name,))
            return bool(cur.rowcount)
