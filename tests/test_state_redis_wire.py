"""The wire (packed commands on a connection of their own) against a real redis-server: what it reads back
is what redis-py would, in one round trip, and a lost connection or a forgotten script is not an error."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError, ResponseError

from engine.state.redis.wire import Wire, encode, evalsha, pack
from redis_server import redis_server, redis_url  # noqa: F401 - fixtures


def command(*parts: Any) -> bytes:
    return pack(*map(encode, parts))


@pytest.mark.parametrize("protocol", [2, 3])
def test_each_kind_of_reply_reads_as_redis_py_reads_it_and_a_refusal_is_that_commands_answer(
    redis_url: str, protocol: int
) -> None:
    client = redis.Redis.from_url(f"{redis_url}?protocol={protocol}")
    client.script_flush()
    client.hset("h", mapping={"a": "1"})
    client.xadd("s", {"event": "é", "at": "1.5"})
    client.xgroup_create("s", "g", id="0")
    script = client.register_script("return {1, 'two', redis.call('GET', 'absent'), {3, {}}}")
    wire = Wire(client)
    answers = wire.call(
        [
            command("PING"),
            command("SET", "k", "v"),
            command("GET", "k"),
            command("GET", "absent"),
            command("INCR", "n"),
            command("INCR", "k"),  # refused: not a number; the commands after it are still answered
            command("HGETALL", "h"),
            command("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", "s", ">"),
            evalsha(script, [], []),  # not loaded yet: NOSCRIPT, as an answer
            command("GET", "k"),
        ]
    )
    assert answers[:5] == [b"PONG", b"OK", b"v", None, 1]
    assert isinstance(answers[5], ResponseError) and "not an integer" in str(answers[5])
    assert answers[6] == ({b"a": b"1"} if protocol == 3 else [b"a", b"1"])
    streams = answers[7].items() if protocol == 3 else answers[7]
    [(name, [(_, fields)])] = list(streams)
    assert name == b"s" and fields == [b"event", "é".encode(), b"at", b"1.5"]
    assert isinstance(answers[8], NoScriptError)
    assert answers[9] == b"v"
    # run_scripts loads a script the server does not know and sends that call again.
    assert wire.run_scripts([(script, evalsha(script, [], []))]) == [[1, b"two", None, [3, []]]]
    client.script_flush()  # a restarted server
    assert wire.run_scripts([(script, evalsha(script, [], []))]) == [[1, b"two", None, [3, []]]]


@pytest.mark.parametrize("protocol", [2, 3])
def test_a_reply_larger_than_one_read_and_many_replies_at_once(redis_url: str, protocol: int) -> None:
    client = redis.Redis.from_url(f"{redis_url}?protocol={protocol}")
    big = b"x" * 300_000 + "é".encode()
    client.set("big", big)
    client.mset({f"k{i}": f"value {i}" * (i % 7) for i in range(3000)})
    wire = Wire(client)
    assert wire.call([command("GET", "big")]) == [big]
    assert wire.call([command("INCR", "n")] * 5000) == list(range(1, 5001))
    # An array of many strings, some empty, some absent, one larger than a read: cut anywhere between reads.
    keys = ["big", *[f"k{i}" for i in range(3000)], "absent", "big"]
    assert wire.call([command("MGET", *keys)]) == [client.mget(keys)]


def test_a_connection_the_server_closed_is_opened_again_and_the_call_goes_through(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    wire = Wire(client)
    assert wire.call([command("CLIENT", "SETNAME", "the-wire")]) == [b"OK"]
    killed = client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert wire.call([command("INCR", "n")]) == [1]  # sent once: the closed connection never carried it
    assert client.get("n") == b"1"


def test_a_connection_reset_while_idle_is_opened_again_and_the_call_goes_through(redis_url: str) -> None:
    """A reset (not a close) found before a command goes: the same as a close, never an OSError to the caller."""
    client = redis.Redis.from_url(redis_url)
    wire = Wire(client)
    assert wire.call([command("PING")]) == [b"PONG"]
    real = wire._conn._sock

    class Reset:  # the socket as it reads once the peer has reset the connection
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def recv(self, size: int) -> bytes:
            raise ConnectionResetError(104, "Connection reset by peer")

    class Ready:  # something came while idle
        def poll(self, timeout: int) -> list[tuple[int, int]]:
            return [(real.fileno(), 1)]

    wire._conn._sock = wire._polled = Reset()
    wire._poll = Ready()  # type: ignore[assignment]
    assert wire.call([command("INCR", "reset-n")]) == [1]
    assert client.get("reset-n") == b"1"


def test_a_push_message_between_replies_is_not_taken_for_one(redis_url: str) -> None:
    client = redis.Redis.from_url(f"{redis_url}?protocol=3")
    wire = Wire(client)
    assert wire.call([command("CLIENT", "TRACKING", "ON")]) == [b"OK"]
    assert wire.call([command("GET", "tracked")]) == [None]
    client.set("tracked", "1")  # the server tells the wire's connection: an invalidation, pushed
    assert wire.call([command("PING"), command("GET", "tracked")]) == [b"PONG", b"1"]


def test_a_refused_connection_is_the_clients_connection_error() -> None:
    from redis_server import free_port

    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", retry=None)
    with pytest.raises(redis.ConnectionError):
        Wire(client).call([command("PING")])


def test_a_reply_cut_anywhere_is_read_only_once_whole() -> None:
    from engine.state.redis.wire import _PUSH, _Incomplete, _parse

    replies = [
        (b"$5\r\nhello\r\n", b"hello"),
        (b"*3\r\n$0\r\n\r\n$-1\r\n$4\r\na\r\nb\r\n", [b"", None, b"a\r\nb"]),
        (b"*4\r\n_\r\n:42\r\n,1.5\r\n%1\r\n+k\r\n*1\r\n$1\r\nv\r\n", [None, 42, 1.5, {b"k": [b"v"]}]),
        (b">2\r\n$10\r\ninvalidate\r\n*0\r\n", _PUSH),
        (b"-NOSCRIPT No matching script.\r\n", NoScriptError),
    ]
    for reply, expected in replies:
        for cut in range(len(reply)):
            with pytest.raises(_Incomplete):
                _parse(reply[:cut], 0)
        value, pos = _parse(reply, 0)
        assert pos == len(reply)
        assert isinstance(value, expected) if expected is NoScriptError else value == expected
