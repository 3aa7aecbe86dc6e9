"""Script calls on a connection of their own: packed once, sent and read without redis-py's general path.

Why: a worker makes a synchronous script call or two per lead (the rate
budget's take, the journal's record). Through ``Script.__call__`` each costs
some 55 µs of the client's CPU (the pool's checkout and pid checks, each
argument through the encoder, the RESP3 parser's many small calls, the
observability hooks), where the socket's send and receive cost about 10 µs.
Here a call is bytes packed once (the take's never change: its key, rate and
capacity are fixed), written with the connection's ``send_packed_command``
and its replies read by a small RESP2/RESP3 reader.

The connection is redis-py's own class built from the client's settings, so
a URL's host, port, database, password, TLS or Unix socket, its time-outs,
and its retry policy for a lost connection are the client's. A call that
meets a lost connection is retried as redis-py retries a command (the same
policy), on a new connection.
"""

from __future__ import annotations

import builtins
import select
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from redis import Redis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError, NoScriptError, RedisError, TimeoutError

Arg = bytes | str | int | float


class Script(Protocol):
    """A script registered with either client (``register_script``): its text and digest."""

    script: Any
    sha: Any


def encode(value: Arg) -> bytes:
    """An argument as redis-py sends it: text as UTF-8, numbers as their shortest form."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError("a boolean is not a Redis argument")  # as redis-py refuses it
    return repr(value).encode() if isinstance(value, float) else str(value).encode()


def pack(*parts: bytes) -> bytes:
    """One command in RESP."""
    return b"".join([b"*%d\r\n" % len(parts), *[b"$%d\r\n%b\r\n" % (len(part), part) for part in parts]])


def evalsha(script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
    """``EVALSHA`` of ``script``, packed (per lead: written out, not through :func:`pack`, at a third of its CPU)."""
    sha = script.sha.encode() if isinstance(script.sha, str) else script.sha
    count = b"%d" % len(keys)
    out = [
        b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
        % (3 + len(keys) + len(args), len(sha), sha, len(count), count)
    ]
    for part in (*keys, *args):
        data = part.encode() if type(part) is str else encode(part)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


class Wire:
    """One connection for packed commands; :meth:`call` is one round trip for any number of them."""

    def __init__(self, client: Redis) -> None:
        pool = client.connection_pool
        self._make = lambda: pool.connection_class(**pool.connection_kwargs)
        self._conn: Any = None
        self._buffer = b""
        self._poll: select.poll | None = None  # the connection's socket: readable while idle?
        self._polled: Any = None  # the socket it polls
        # One round trip at a time: its users run on the event loop's thread today, but a reply read by
        # another thread's call would be handed to the wrong caller (uncontended, well under a microsecond).
        self._lock = threading.Lock()

    def call(self, commands: Sequence[bytes]) -> list[Any]:
        """Each command's reply, in order; a command Redis refused is its error (an exception instance)."""
        data = commands[0] if len(commands) == 1 else b"".join(commands)
        with self._lock:
            retry = self._connection().retry
            if not retry.get_retries():  # the client's usual policy (from_url): none; so no call through it
                try:
                    return self._round_trip(data, len(commands))
                except (ConnectionError, TimeoutError):
                    self._drop()
                    raise
            return list(
                retry.call_with_retry(lambda: self._round_trip(data, len(commands)), lambda _error: self._drop())
            )

    def run_scripts(self, calls: Sequence[tuple[Script, bytes]]) -> list[Any]:
        """Each packed ``EVALSHA``'s reply, in one round trip; scripts the server lost are loaded and sent again."""
        answers = self.call([packed for _, packed in calls])
        missing = [i for i, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
        if missing:
            scripts = {id(calls[i][0]): calls[i][0] for i in missing}.values()
            self.call([pack(b"SCRIPT", b"LOAD", encode(script.script)) for script in scripts])
            for i, answer in zip(missing, self.call([calls[i][1] for i in missing]), strict=True):
                answers[i] = answer
        return answers

    def close(self) -> None:
        self._drop()

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._make()
        return self._conn

    def _drop(self) -> None:
        conn, self._conn, self._buffer, self._poll, self._polled = self._conn, None, b"", None, None
        if conn is not None:
            conn.disconnect()

    def _round_trip(self, data: bytes, replies: int) -> list[Any]:
        conn = self._connection()
        sock = getattr(conn, "_sock", None)
        if sock is not None and sock is self._polled and self._poll is not None and self._poll.poll(0):
            # Something came while idle: a push message, or the end of a connection the server closed
            # (time-out, restart). As redis-py does before each command: found closed, it is opened again
            # before the command goes, so a command is never sent on a connection already lost.
            try:
                chunk = sock.recv(65536)
            except OSError:  # reset while idle: as closed
                chunk = b""
            if chunk:
                self._buffer += chunk
            else:
                self._drop()
                conn = self._connection()
        conn.send_packed_command([data])  # connects (and authenticates) when it must; the client's health check
        sock = getattr(conn, "_sock", None)
        if sock is None:  # not a socket this reader knows: redis-py's own parser
            return [_read_with_parser(conn) for _ in range(replies)]
        if self._poll is None or self._polled is not sock:
            self._poll, self._polled = select.poll(), sock
            self._poll.register(sock, select.POLLIN)
        answers: list[Any] = []
        buffer, pos = self._buffer, 0
        try:
            while len(answers) < replies:
                try:
                    value, pos = _parse(buffer, pos)
                except _Incomplete:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("Connection closed by server.") from None
                    buffer = buffer[pos:] + chunk
                    pos = 0
                    continue
                if value is not _PUSH:
                    answers.append(value)
        except builtins.TimeoutError:  # the socket's time-out
            self._drop()
            raise TimeoutError("Timeout reading from Redis") from None
        except OSError as exc:
            self._drop()
            raise ConnectionError(f"Error while reading from Redis: {type(exc).__name__}") from None
        except ConnectionError:
            self._drop()
            raise
        self._buffer = buffer[pos:]
        return answers


_PUSH = object()  # an out-of-band message (RESP3 push): not a reply


def _read_with_parser(conn: Any) -> Any:
    try:
        return conn.read_response()
    except RedisError as exc:
        if isinstance(exc, (ConnectionError, TimeoutError)):
            raise
        return exc


def _parse(buffer: bytes, pos: int) -> tuple[Any, int]:
    """One reply from ``buffer`` at ``pos``: (value, position after it). Errors are returned, not raised."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buffer[pos : pos + 1], buffer[pos + 1 : end]
    pos = end + 2
    if kind == b"$" or kind == b"=" or kind == b"!":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise _Incomplete
        blob = buffer[pos : pos + size]
        pos += size + 2
        if kind == b"!":
            return BaseParser.parse_error(blob.decode("utf-8", "replace")), pos
        return (blob[4:] if kind == b"=" else blob), pos
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return BaseParser.parse_error(line.decode("utf-8", "replace")), pos
    if kind == b"_":
        return None, pos
    if kind in (b"*", b"~", b">", b"%", b"|"):
        count = int(line)
        if count < 0:
            return None, pos
        items: list[Any] = []
        for _ in range(count * 2 if kind in (b"%", b"|") else count):
            if buffer[pos : pos + 1] == b"$":  # most items (a stream entry's fields): read here, not by a call
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    raise _Incomplete
                size = int(buffer[pos + 1 : end])
                if size < 0:
                    items.append(None)
                    pos = end + 2
                    continue
                if len(buffer) < end + size + 4:
                    raise _Incomplete
                items.append(buffer[end + 2 : end + 2 + size])
                pos = end + size + 4
                continue
            item, pos = _parse(buffer, pos)
            items.append(item)
        if kind == b">":
            return _PUSH, pos
        if kind == b"|":  # attributes come before the reply they describe
            return _parse(buffer, pos)
        if kind == b"%":
            return dict(zip(items[::2], items[1::2], strict=True)), pos
        return items, pos
    if kind == b",":
        return float(line), pos
    if kind == b"#":
        return line == b"t", pos
    if kind == b"(":
        return int(line), pos
    raise ConnectionError(f"Protocol error: unexpected reply type {kind!r}")
