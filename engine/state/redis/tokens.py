"""Refresh and access tokens in Redis: one refresh at a time across every worker, on any machine.

* **The lock** is a key set with ``NX`` and an expiry, holding a random
  token of its owner; only the owner deletes it (a Lua compare-and-delete).
  While it is held, the owner renews the expiry on the event loop, so a
  refresh that waits out a throttled token endpoint keeps it; a worker that
  dies (even by ``kill -9``) stops renewing, and the lock expires.
* **The rotated refresh token** is stored with a compare-and-set on a
  version number: a save lands only if the chain is still at the version
  this worker last read. The refresh itself happens under the lock, right
  after re-reading the store, so a worker always spends the newest token;
  the compare-and-set makes sure that a worker whose lock expired under it
  can never overwrite a newer token with an older one.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from redis import Redis

from ...loggers import package_logger
from ..token_store import StoredTokens, fingerprint, values_from_text, values_text
from .errors import reading, writing
from .keys import Keys, decoded

log = package_logger(__name__)

LOCK_SECONDS = 30.0

# KEYS: the chain. ARGV: expected version ('' = none yet), refresh, access, expires, saved_at, token values.
SAVE = """
local current = redis.call('HGET', KEYS[1], 'version')
if (current or '') ~= ARGV[1] then return -1 end
local version = tonumber(current or '0') + 1
redis.call('HSET', KEYS[1], 'refresh_token', ARGV[2], 'access_token', ARGV[3],
           'access_expires_at', ARGV[4], 'saved_at', ARGV[5], 'token_values', ARGV[6], 'version', version)
return version
"""

# KEYS: the lock. ARGV: owner token, milliseconds ('' = delete).
OWNED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


class RedisTokenStore:
    def __init__(self, client: Redis, keys: Keys, client_id: str, *, lock_seconds: float = LOCK_SECONDS) -> None:
        self.r = client
        self.keys = keys
        self.client = fingerprint(client_id)
        self.lock_key = keys.token_lock(self.client)
        self.lock_seconds = lock_seconds
        self._versions: dict[str, str] = {}  # chain -> the version this worker last read or wrote
        self._owner: str | None = None
        self._renewal: asyncio.TimerHandle | None = None
        self._save = client.register_script(SAVE)
        self._owned = client.register_script(OWNED)

    def chain(self, configured: str) -> str:
        return f"{self.client}:{fingerprint(configured)}"

    def load(self, configured: str) -> StoredTokens | None:
        chain = self.chain(configured)
        with reading("the tokens"):
            refresh, access, expires, version, values = self.r.hmget(
                self.keys.tokens(chain), "refresh_token", "access_token", "access_expires_at", "version", "token_values"
            )
        self._versions[chain] = decoded(version) if version is not None else ""
        if not refresh:
            return None
        return StoredTokens(
            decoded(refresh),
            decoded(access) if access else None,
            float(expires) if expires else None,
            values_from_text(values),
        )

    def save(self, tokens: StoredTokens, configured: str) -> None:
        chain = self.chain(configured)
        expected = self._versions.get(chain)
        if expected is None:
            self.load(configured)
            expected = self._versions[chain]
        with writing("the tokens"):
            version = self._save(
                keys=[self.keys.tokens(chain)],
                args=[
                    expected,
                    tokens.refresh_token,
                    tokens.access_token or "",
                    "" if tokens.access_expires_at is None else repr(tokens.access_expires_at),
                    repr(time.time()),
                    values_text(tokens.values) or "",
                ],
            )
        if int(version) < 0:
            log.error(
                "auth: another worker stored a newer refresh token meanwhile; this one is not saved "
                "(the next refresh starts from the stored one)"
            )
            self._versions.pop(chain, None)
            return
        self._versions[chain] = str(version)

    def check_writable(self) -> bool:
        try:
            with writing("the tokens"):
                return bool(self.r.ping())
        except OSError:
            return False

    def try_lock(self) -> bool:
        """Take the refresh lock without blocking; renewed while held, on the running loop."""
        if self._owner is not None:
            return False
        owner = secrets.token_hex(16)
        try:
            with writing("the token lock"):
                taken = self.r.set(self.lock_key, owner, nx=True, px=int(self.lock_seconds * 1000))
        except OSError:
            return False
        if not taken:
            return False
        self._owner = owner
        self._arm()
        return True

    def unlock(self) -> None:
        owner, self._owner = self._owner, None
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        if owner is not None:
            try:
                with writing("the token lock"):
                    self._owned(keys=[self.lock_key], args=[owner, ""])
            except OSError:
                pass  # it expires on its own

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._renewal = loop.call_later(self.lock_seconds / 3, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        if self._owner is None:
            return
        try:
            with writing("the token lock"):
                kept = self._owned(keys=[self.lock_key], args=[self._owner, int(self.lock_seconds * 1000)])
        except OSError:
            kept = 1  # Redis unreachable for now: try again on the next tick
        if kept:
            self._arm()
        else:
            log.error("auth: the refresh lock expired while held; another worker may refresh too")

    def holder(self) -> Any:
        """Whether some worker holds the refresh lock now (for tests and operators)."""
        with reading("the token lock"):
            return self.r.get(self.lock_key) is not None
