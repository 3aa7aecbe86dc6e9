"""The SHA-256 of a file's bytes, for telling whether a preset or a schema changed since it was checked.

hashlib loads OpenSSL when imported, about 3 ms of every start; CPython's own
SHA-256 (``_sha256``, ``_sha2`` from 3.12) gives the same digest without it.
hashlib is the fallback where neither is built in.
"""

from __future__ import annotations

from typing import Any

try:
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - the name on Python 3.12+, or hashlib
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[assignment,unused-ignore]


def sha256_hex(data: bytes) -> str:
    """The lower-case hex SHA-256 of ``data``."""
    digest: Any = _sha256(data)
    return str(digest.hexdigest())
