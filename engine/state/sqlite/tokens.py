"""Refresh and access tokens in the state database, and the lock that serialises refreshes.

A row per token chain: the client (a fingerprint of its id) and the
configured refresh token the chain started from (a fingerprint too, so a
re-authorisation starts a new chain instead of reviving a revoked one).
Presets that use the same app with the same configured token share the
chain, as they must: each refresh revokes the token the other holds.

The lock is ``flock`` on ``<dir>/refresh.lock``: released by the kernel when
a process dies, even by ``kill -9``, and exclusive between two engines of
one process too (it belongs to the open file, not the process).
"""

from __future__ import annotations

import fcntl
import os
import time

from ..errors import StateWriteError
from ..token_store import StoredTokens, fingerprint, values_from_text, values_text
from .database import Database

LOCK_NAME = "refresh.lock"


class SqliteTokenStore:
    def __init__(self, db: Database, client_id: str) -> None:
        self.db = db
        self.client = fingerprint(client_id)
        self.lock_path = db.directory / LOCK_NAME
        self._lock_fd: int | None = None

    def chain(self, configured: str) -> str:
        return f"{self.client}:{fingerprint(configured)}"

    def load(self, configured: str) -> StoredTokens | None:
        rows = self.db.read(
            "SELECT refresh_token, access_token, access_expires_at, token_values FROM tokens WHERE chain = ?",
            (self.chain(configured),),
        )
        if not rows or not rows[0][0]:
            return None
        refresh, access, expires, values = rows[0]
        return StoredTokens(
            refresh, access or None, float(expires) if expires is not None else None, values_from_text(values)
        )

    def save(self, tokens: StoredTokens, configured: str) -> None:
        with self.db.write(durable=True) as cur:
            cur.execute(
                "INSERT OR REPLACE INTO tokens (chain, refresh_token, access_token, access_expires_at, saved_at, "
                "token_values) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    self.chain(configured),
                    tokens.refresh_token,
                    tokens.access_token,
                    tokens.access_expires_at,
                    time.time(),
                    values_text(tokens.values),
                ),
            )

    def check_writable(self) -> bool:
        """Commit a small durable write, as a save would: the state can take the rotated token."""
        try:
            with self.db.write(durable=True) as cur:
                cur.execute(
                    "INSERT OR REPLACE INTO write_probe (id, at, pad) VALUES (1, ?, zeroblob(512))", (time.time(),)
                )
            return True
        except StateWriteError:
            return False

    def try_lock(self) -> bool:
        """Take the refresh lock without blocking."""
        if self._lock_fd is not None:
            return False
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
