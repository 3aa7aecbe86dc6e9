"""What every connection and answer of the intake's HTTP server gets, whatever the route.

* **Errors in one shape.** An unknown route is a JSON 404, a wrong method a
  JSON 405 (with ``Allow``), and an unforeseen error a JSON 500: the same
  ``{"error", "code", "message"}`` as every other refusal, never aiohttp's
  plain text.
* **One line per problem, no traceback.** aiohttp logs a malformed request
  or a failing handler with its traceback; here it is one warning line
  (the exception's type and first line), through the engine's loggers, so
  the redactor and ``--log-format json`` apply.
* **Slow clients are closed.** A connection that sends no complete request
  head within the idle timeout of opening (or of its previous answer) is
  closed: that bounds both slow headers and idle keep-alive connections.
  The body's own timeout is the intake's (:meth:`Intake._read`). What is
  left of a refused body is read for at most :data:`LINGER_SECONDS`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..loggers import package_logger

log = package_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_middleware(respond: Callable[[int, str, str, dict[str, str]], web.Response]) -> Any:
    """A middleware answering 404, 405 and any unforeseen error with ``respond(status, code, message, headers)``."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return respond(404, "not_found", f"no route {request.method} {_path(request)}", {})
        except web.HTTPMethodNotAllowed as exc:
            allowed = sorted(exc.allowed_methods)
            return respond(
                405,
                "method_not_allowed",
                f"{_path(request)} does not take {request.method} (it takes {', '.join(allowed)})",
                {"Allow": ", ".join(allowed)},
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return respond(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, {})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line, a JSON 500: never a traceback
            log.error("intake: %s %s failed: %s", request.method, _path(request), _first_line(exc))
            return respond(500, "internal_error", "the intake could not handle this request; retry it", {})

    return errors


class OneLineServerLog:
    """Stands in for aiohttp's server logger: what it would log with a traceback becomes one line."""

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass  # aiohttp's debug notes (a client that went away) are not the operator's concern

    def exception(self, message: str, *args: Any, exc_info: Any = None, **_: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        text = message % args if args else message
        log.warning("intake: %s: %s", text, _first_line(exc) if exc is not None else "error")

    def warning(self, message: str, *args: Any, **_: Any) -> None:
        log.warning("intake: %s", message % args if args else message)

    error = exception


def server_options(idle_timeout: float, linger: float) -> dict[str, Any]:
    """Options for aiohttp's request handler (``web.Application(handler_args=...)``)."""
    return {
        "keepalive_timeout": idle_timeout,
        "lingering_time": linger,
        "logger": OneLineServerLog(),
        "auto_decompress": False,
    }


def _first_line(exc: BaseException) -> str:
    # aiohttp's parse errors put the status first and the reason in .message
    text = getattr(exc, "message", None)
    text = text if isinstance(text, str) and text else str(exc)
    return f"{type(exc).__name__}: {(text.splitlines() or [''])[0][:200]}".rstrip(": ")


def _path(request: web.Request) -> str:
    path = request.path
    return path if len(path) <= 100 else path[:100] + "…"


__all__ = ["OneLineServerLog", "error_middleware", "server_options"]
