"""Run ``signal-engine`` with every Redis round trip it makes counted, by the client, in that process.

    python benchmarks/round_trips.py COUNTS_FILE worker PRESET --redis URL ...

A round trip is one write of the client to its connection
(``send_packed_command`` of redis-py, sync and asyncio): one command, a whole
pipeline or ``MULTI`` block, or one ``EVALSHA`` with every command its script
runs inside Redis. Each is also counted under a label, the names of the
commands it carried (``EVALSHA``, ``SET+GET``, ``MULTI+XADD+XACK+EXEC``...).
On SIGUSR1 the counts so far are written to COUNTS_FILE as JSON (the
benchmark takes one snapshot once the worker is idle, one when the leads are
done, and subtracts); the process goes on unchanged.

A send only keeps a reference to what was sent; the labels are worked out
at the snapshot, which the benchmark takes after it read the worker's CPU:
labelling each send as it went (a regular expression over every packed
command, acknowledgements of 850-byte outcomes included) cost the worker
some 100 µs of CPU per lead, counted as its own. The engine imported is this
checkout's (the folder above this one), whatever the environment installed.
"""

from __future__ import annotations

import collections
import json
import re
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import redis.asyncio.connection as async_connection
import redis.connection as sync_connection

# The name of each command in a packed RESP request: an array, then the command as its first bulk string.
_COMMAND = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")

counts: collections.Counter[str] = collections.Counter()
sent: list[bytes] = []  # what was sent since the last snapshot, labelled at the next


def _kept(command: Any) -> bytes:
    """What was sent, as one bytes object: kept lists would be the garbage collector's to scan, again and again."""
    if isinstance(command, str):
        return command.encode()
    if isinstance(command, bytes):
        return command
    return b"".join(c.encode() if isinstance(c, str) else c for c in command)


def _label(command: Any) -> str:
    chunks = [command] if isinstance(command, (bytes, str)) else list(command)
    data = b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks)
    names = collections.Counter(name.decode().upper() for name in _COMMAND.findall(data))
    # A pipeline of 64 SET and 64 GET reads "SETx64+GETx64" (the commands in the order they first came).
    return "+".join(name if n == 1 else f"{name}x{n}" for name, n in names.items()) or "?"


def _counting(original: Any, asynchronous: bool) -> Any:
    if asynchronous:

        async def send(self: Any, command: Any, check_health: bool = True) -> None:
            sent.append(_kept(command))
            await original(self, command, check_health)

        return send

    def send_sync(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(_kept(command))
        original(self, command, check_health)

    return send_sync


def snapshot(out: Path) -> None:
    for command in sent:
        counts[_label(command)] += 1
    sent.clear()
    out.write_text(json.dumps(dict(counts)), encoding="utf-8")


def main() -> None:
    out = Path(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's engine
    sync_connection.AbstractConnection.send_packed_command = _counting(  # type: ignore[method-assign]
        sync_connection.AbstractConnection.send_packed_command, False
    )
    async_connection.AbstractConnection.send_packed_command = _counting(  # type: ignore[method-assign]
        async_connection.AbstractConnection.send_packed_command, True
    )
    signal.signal(signal.SIGUSR1, lambda *_: snapshot(out))
    sys.argv = ["signal-engine", *sys.argv[2:]]
    runpy.run_module("engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
