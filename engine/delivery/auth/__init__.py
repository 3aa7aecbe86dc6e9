"""Auth kinds, one small class each behind :class:`Auth`, chosen by the preset's ``auth.type``."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from ...language.model import AuthSpec, RetrySpec
from ...language.settings import Settings
from ...redaction import Redactor
from ...state.token_store import MemoryTokenStore, TokenStore
from ..transport import Transport
from .base import Auth, AuthFailure, apply_credential, masked_view
from .oauth2 import OAuth2Auth
from .static import ApiKeyAuth, BasicAuth, BearerAuth, refuses_static_credential

__all__ = [
    "Auth",
    "AuthFailure",
    "OAuth2Auth",
    "apply_credential",
    "build_auth",
    "masked_view",
    "refuses_static_credential",
]


def build_auth(
    spec: AuthSpec | None,
    settings: Settings,
    redactor: Redactor,
    transport: Transport,
    retries: RetrySpec,
    *,
    store: TokenStore | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> Auth | None:
    if spec is None:
        return None
    if spec.type == "bearer":
        return BearerAuth(spec, settings, redactor)
    if spec.type == "api_key":
        return ApiKeyAuth(spec, settings, redactor)
    if spec.type == "basic":
        return BasicAuth(spec, settings, redactor)
    return OAuth2Auth(
        spec, settings, store or MemoryTokenStore(), redactor, retries, transport, clock=clock, sleep=sleep, rng=rng
    )
