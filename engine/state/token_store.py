"""Where a rotating refresh token lives between runs.

Outreach invalidates a refresh token the moment it is used, so losing the
new one loses the connection: a person has to re-authorise. The new token is
therefore written durably before the access token minted with it is used.
The engine's default store is a row in the state database
(:mod:`engine.state.sqlite.tokens`); :class:`FileTokenStore` is a single JSON
file for hosts that want one. Hosts with a secrets manager implement
:class:`TokenStore`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol


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


class FileTokenStore:
    """A 0600 JSON file in the state directory.

    The file remembers which configured token it descends from: when a user
    re-authorises and puts a *new* refresh token in the settings, that one
    wins over the persisted (now revoked) chain.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def try_lock(self) -> bool:
        """Take the refresh lock without blocking; several engines may share one state directory."""
        if self._lock_fd is not None:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
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

    def check_writable(self) -> bool:
        """Write and sync a file as large as a token file next to it: the disk has room for a save."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=self.path.parent)
        except OSError:
            return False
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(b" " * 4096)
                handle.flush()
                os.fsync(handle.fileno())
            return True
        except OSError:
            return False
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def load(self, configured: str) -> StoredTokens | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # missing or unreadable store: start from the configured token
        if not isinstance(data, dict) or data.get("origin") != fingerprint(configured):
            return None
        refresh = data.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            return None
        access = data.get("access_token")
        expires = data.get("access_expires_at")
        return StoredTokens(refresh, access if isinstance(access, str) and access else None,
                            float(expires) if isinstance(expires, (int, float)) else None)

    def save(self, tokens: StoredTokens, configured: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = json.dumps({"origin": fingerprint(configured), "saved_at": int(time.time()), **asdict(tokens)})
        fd, tmp = tempfile.mkstemp(prefix=".token-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
