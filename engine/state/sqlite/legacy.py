"""A one-time import of the files the engine kept before the state database.

Up to now a state directory held, per preset, ``<preset>/identity.json``,
``<preset>/dead-letters.jsonl`` and ``<preset>/refresh-token-<client>.json``.
An upgrade must not lose the rotated refresh token (the configured one is
already revoked) nor a dead letter, so the first engine to open the
database for that preset imports them, in one transaction, and renames each
file to ``<name>.imported`` (kept for the user to delete). The ``imported``
table remembers each source, so a rename that failed never imports twice.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ...loggers import package_logger
from ..dead_letters import read_legacy_file
from .database import Database
from .identity import SqliteIdentityStore

log = package_logger(__name__)

IMPORTED_SUFFIX = ".imported"


def import_legacy(db: Database, preset: str, identity: SqliteIdentityStore) -> None:
    folder = db.directory / preset
    if not folder.is_dir():
        return
    sources = [p for p in sorted(folder.iterdir()) if p.is_file() and _is_legacy(p.name)]
    sources = [p for p in sources if not db.read("SELECT 1 FROM imported WHERE source = ?", (str(p.resolve()),))]
    if not sources:
        return
    letters: list[dict[str, Any]] = []
    tokens: list[tuple[str, dict[str, Any]]] = []
    remembered: list[tuple[str, str, str | None, dict[str, Any], float]] = []
    for path in sources:
        if path.name == "dead-letters.jsonl":
            letters += read_legacy_file(path)
        elif path.name == "identity.json":
            remembered += _identity_rows(path)
        else:
            data = _json(path)
            if (
                isinstance(data, dict)
                and isinstance(data.get("refresh_token"), str)
                and isinstance(data.get("origin"), str)
            ):
                client = path.name[len("refresh-token-") : -len(".json")]
                tokens.append((f"{client}:{data['origin']}", data))
    if remembered:
        identity.bulk_load(remembered)
    now = time.time()
    with db.write(durable=True) as cur:
        for entry in letters:
            if entry.get("id") is None:
                continue
            cur.execute(
                "INSERT OR IGNORE INTO dead_letters (id, preset, key, added_at, entry) VALUES (?, ?, ?, ?, ?)",
                (
                    str(entry["id"]),
                    str(entry.get("preset") or preset),
                    None,
                    float(entry.get("dead_lettered_at") or now),
                    json.dumps(entry, ensure_ascii=False, default=str),
                ),
            )
        for chain, data in tokens:
            saved = float(data.get("saved_at") or 0)
            row = cur.execute("SELECT saved_at FROM tokens WHERE chain = ?", (chain,)).fetchone()
            if row is None or row[0] < saved:  # never replace a newer rotation by an older file
                expires = data.get("access_expires_at")
                cur.execute(
                    "INSERT OR REPLACE INTO tokens (chain, refresh_token, access_token, access_expires_at, saved_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        chain,
                        data["refresh_token"],
                        data.get("access_token") or None,
                        float(expires) if isinstance(expires, (int, float)) else None,
                        saved,
                    ),
                )
        for path in sources:
            cur.execute(
                "INSERT OR REPLACE INTO imported (source, imported_at) VALUES (?, ?)", (str(path.resolve()), now)
            )
    for path in sources:
        try:
            os.replace(path, path.with_name(path.name + IMPORTED_SUFFIX))
        except OSError:
            pass  # the imported table already keeps it from being read twice
    log.warning(
        "state: imported %s from the files of an earlier version (renamed to *%s)",
        ", ".join(p.name for p in sources),
        IMPORTED_SUFFIX,
    )


def _is_legacy(name: str) -> bool:
    return name in ("identity.json", "dead-letters.jsonl") or (
        name.startswith("refresh-token-") and name.endswith(".json")
    )


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _identity_rows(path: Path) -> list[tuple[str, str, str | None, dict[str, Any], float]]:
    data = _json(path)
    try:
        seen = path.stat().st_mtime
    except OSError:
        seen = time.time()
    rows = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("traits"), dict):
            continue
        owner = item.get("owner")
        rows.append(
            (str(item.get("key")), str(item.get("id")), owner if isinstance(owner, str) else None, item["traits"], seen)
        )
    return rows
