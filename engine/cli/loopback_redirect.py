"""The loopback end of an OAuth redirect (RFC 8252 §7.3), for ``signal-engine auth``.

A command-line tool has no web server a destination could redirect to, so it
listens on ``http://127.0.0.1:<port>/callback`` for the one request the
person's browser makes after they approve (or deny) the app. The IP literal,
not ``localhost``, so nothing listens on another interface (RFC 8252 §8.3).

Only the redirect that carries this authorisation's ``state`` counts
(RFC 6749 §10.12): a stale browser tab from an earlier attempt, or a forged
request, is answered with an error page and ignored. The access log is off:
the request line holds the authorization code.
"""

from __future__ import annotations

import asyncio
import hmac
import html
from collections.abc import Callable

from aiohttp import web

CALLBACK_PATH = "/callback"
HOST = "127.0.0.1"


class LoopbackRedirect:
    """Serves one redirect: :meth:`start`, hand out :attr:`redirect_uri`, then :meth:`wait`."""

    def __init__(self, state: str, *, port: int = 0, warn: Callable[[str], None] = lambda _line: None) -> None:
        self._state = state
        self._port = port
        self._warn = warn
        self._result: asyncio.Future[dict[str, str]] | None = None
        self._runner: web.AppRunner | None = None
        self.redirect_uri = ""

    async def start(self) -> str:
        """Listen; raise ``OSError`` when the port cannot be had. Returns the redirect URI."""
        self._result = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get(CALLBACK_PATH, self._callback)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        self.redirect_uri = f"http://{HOST}:{port}{CALLBACK_PATH}"
        return self.redirect_uri

    async def wait(self, timeout: float) -> dict[str, str]:
        """The query of the redirect that carried our state: ``code``, or ``error`` (RFC 6749 §4.1.2).

        Raises ``TimeoutError`` when none came in ``timeout`` seconds.
        """
        assert self._result is not None, "start() first"
        return await asyncio.wait_for(asyncio.shield(self._result), timeout)

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _callback(self, request: web.Request) -> web.Response:
        assert self._result is not None
        params = {key: request.query.getone(key) for key in request.query}
        if self._result.done():
            return _page(
                409, "Already answered", "This authorisation has already been answered. Return to the terminal."
            )
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), self._state.encode()):
            self._warn(
                "signal-engine: ignored a redirect whose state does not belong to this authorisation "
                "(a browser tab from an earlier attempt?); still waiting"
            )
            return _page(
                400,
                "Not this authorisation",
                "This answer does not belong to the authorisation the terminal is waiting for "
                "(its state differs). Open the link the terminal printed last.",
            )
        if "error" in params:
            self._result.set_result(params)
            return _page(
                200, "Not authorised", f"The app was not authorised ({params['error']}). Return to the terminal."
            )
        if not params.get("code"):
            self._warn("signal-engine: a redirect came back with neither a code nor an error; still waiting")
            return _page(400, "No code", "The answer carries no authorization code. Return to the terminal.")
        self._result.set_result(params)
        return _page(
            200,
            "Authorised",
            "Signal engine received the authorisation. The terminal says when the "
            "tokens are stored; you can close this tab.",
        )


def _page(status: int, title: str, text: str) -> web.Response:
    """A page without scripts, links or outside resources (its URL holds the code: nothing may leak it)."""
    body = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
