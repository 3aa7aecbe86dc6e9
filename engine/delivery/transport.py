"""The one seam between delivery and the network.

Everything the engine sends (creates, lookups, updates, token requests)
goes through a :class:`Transport`. The aiohttp transport is the real one;
golden cases plug in a scripted transport that answers from a list, so a
whole exchange can be pinned without sockets or sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .. import outcome as oc
from ..envelope import HttpRequest

if TYPE_CHECKING:
    import aiohttp

MAX_BODY_CHARS = 4000  # what a non-JSON body is cut to in outcomes and rules
_DIGITS_AS_ZERO = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_NUMBER = b"0" * 19  # a number this long may be an integer orjson cannot hold


@dataclass
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive names
    body: Any  # parsed JSON, or the text cut to MAX_BODY_CHARS, or None when empty

    def view(self) -> dict[str, Any]:
        return {"status": self.status, "body": self.body}

    def rule_input(self) -> dict[str, Any]:
        """What a response rule's ``match`` sees: header names lower-cased."""
        return {"status": self.status, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": self.body}


class TransportError(Exception):
    """No answer: ``kind`` is ``timeout`` or ``connection``; the message is safe to show."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Transport(Protocol):
    async def send(self, request: HttpRequest) -> HttpResponse:
        """Send once; raise :class:`TransportError` when no HTTP answer came."""


def encode_json(body: Any) -> bytes:
    """The body as compact UTF-8 JSON, written by orjson.

    What orjson cannot write as the standard library would (a lone
    surrogate, an integer beyond 64 bits, a non-string key, NaN or infinity,
    which orjson would turn into ``null``) is written by ``json``. orjson
    writes ``null`` only for None and those floats, so a body whose text
    has no ``null`` in it needs no second look.
    """
    try:
        text = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        pass
    else:
        if b"null" not in text or not _has_non_finite(body):
            return text
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from the input: escaped JSON is still valid JSON.
        return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def parse_body(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text[:MAX_BODY_CHARS]


def parse_raw_body(raw: bytes, charset: str | None) -> Any:
    """A response body as :func:`parse_body` reads it, from its bytes: orjson first, the decoded text otherwise.

    orjson reads UTF-8 JSON as ``json`` does, except integers beyond 64 bits
    (it gives a float): a body with a run of 19 digits, like one orjson refuses
    (another charset, bad UTF-8, NaN, a byte-order mark, text that is not
    JSON), goes the old way, which decides what the body is.
    """
    if not raw:
        return None
    if (charset is None or charset.lower() in ("utf-8", "utf8")) and _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return parse_body(_decode(raw, charset))


class AiohttpTransport:
    """Sends over one shared ``aiohttp.ClientSession``; never follows redirects.

    A redirect would turn a create into a GET that "succeeds", and would
    carry the credential to another host.
    """

    def __init__(self, session: aiohttp.ClientSession, timeout_seconds: float, max_body_bytes: int = 1_048_576) -> None:
        import aiohttp

        self.session = session
        self.timeout_seconds = timeout_seconds
        self.max_body_bytes = max_body_bytes
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)  # also when the host brings the session

    async def send(self, request: HttpRequest) -> HttpResponse:
        import aiohttp
        from yarl import URL

        headers = request.sent_headers()
        data: Any = None
        if request.form is not None:
            data = request.form
        elif request.body is not None:
            data = encode_json(request.body)
        try:
            url = URL(request.full_url(), encoded=True)
            async with self.session.request(
                request.method, url, data=data, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                # Read at most the cap (plus one byte, to know it was passed): a 200 MB
                # answer must cost 1 MB of memory and an error, not the whole body.
                raw = await _read_capped(resp, self.max_body_bytes)
                if raw is None:
                    resp.close()
                    raise TransportError(
                        oc.RESPONSE_TOO_LARGE,
                        f"the answer ({resp.status}) passed {self.max_body_bytes} bytes (delivery.max_response_bytes)",
                    )
                # The response's own read-only headers: case-insensitive, nothing to copy.
                return HttpResponse(resp.status, resp.headers, parse_raw_body(raw, resp.charset))
        except TimeoutError:
            raise TransportError(oc.TIMEOUT, f"no answer within {self.timeout_seconds:g}s") from None
        except (aiohttp.ClientError, ValueError) as exc:
            # Exception text can quote the request; callers redact it before showing.
            raise TransportError(oc.CONNECTION, (str(exc) or type(exc).__name__)[:300]) from None


async def _read_capped(resp: Any, cap: int) -> bytes | None:
    """The body, or None as soon as it is known to be longer than ``cap`` bytes."""
    chunks: list[bytes] = []
    size = 0
    content = resp.content
    while size <= cap:
        chunk = await content.read(cap + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size <= cap and content.at_eof():  # the whole body is here: no read to learn that it ended
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return None


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")
