"""Who may see the console, and what every answer carries.

The console shows personal data (emails, names), so:

* It binds to loopback unless told otherwise; any other address needs
  ``SIGNAL_CONSOLE_TOKEN``, or the console refuses to start
  (:func:`check_exposure`).
* With a token, a script sends ``Authorization: Bearer TOKEN``; a browser
  signs in once on ``/console/login`` and gets an HttpOnly, SameSite=Strict
  session cookie (an HMAC of the token, so it dies with the token). Failed
  sign-ins are rate-limited. An intake write key grants nothing here.
* Every write (replay) from a browser carries a CSRF token from the page; a
  bearer-authenticated script needs none (a browser never sends that header
  on its own).
* Every answer sends a Content-Security-Policy that allows no inline script
  and no other origin, ``nosniff``, ``no-referrer`` and no framing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware

TOKEN_ENV = "SIGNAL_CONSOLE_TOKEN"
COOKIE = "signal_console"
LOGIN_FAILURES_PER_MINUTE = 5

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class ExposureRefused(Exception):
    """The console would be reachable from other machines without a credential."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise ExposureRefused(
            f"the console would listen on {host}, beyond this machine, without a credential: "
            f"set {TOKEN_ENV} (or listen on 127.0.0.1)"
        )


@dataclass
class Guard:
    """The console's credential (``None``: loopback only, nobody signs in) and its per-process CSRF secret."""

    token: str | None = None
    secret: bytes = field(default_factory=lambda: os.urandom(32))
    clock: Callable[[], float] = time.monotonic
    _failures: list[float] = field(default_factory=list)

    @property
    def session(self) -> str:
        assert self.token
        return hmac.new(self.token.encode(), b"console-session", hashlib.sha256).hexdigest()

    @property
    def csrf(self) -> str:
        return hmac.new(self.secret, b"console-csrf", hashlib.sha256).hexdigest()

    def bearer(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return (
            bool(self.token)
            and header.startswith("Bearer ")
            and hmac.compare_digest(header[7:].encode(), self.token.encode())  # type: ignore[union-attr]
        )

    def allowed(self, request: web.Request) -> bool:
        if not self.token:
            return True
        if self.bearer(request):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session.encode())

    def csrf_ok(self, request: web.Request, supplied: str | None) -> bool:
        if self.bearer(request):
            return True
        given = supplied or request.headers.get("X-CSRF-Token") or ""
        return hmac.compare_digest(given.encode(), self.csrf.encode())

    def login_allowed(self) -> bool:
        now = self.clock()
        self._failures[:] = [t for t in self._failures if now - t < 60]
        return len(self._failures) < LOGIN_FAILURES_PER_MINUTE

    def check_login(self, supplied: str) -> bool:
        if self.token and hmac.compare_digest(supplied.encode(), self.token.encode()):
            return True
        self._failures.append(self.clock())
        return False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/console/login", "/console/static/")


def middleware(guard: Guard) -> Middleware:
    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(OPEN_PATHS) and not guard.allowed(request):
            if request.path.startswith("/console/api/"):
                response: web.StreamResponse = web.json_response(
                    {"error": f"sign in: send Authorization: Bearer <{TOKEN_ENV}>"}, status=401
                )
            else:
                response = web.Response(status=303, headers={"Location": "/console/login"})
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                for name, value in HEADERS.items():
                    exc.headers.setdefault(name, value)
                raise
        if not response.prepared:
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
        return response

    return guarded
