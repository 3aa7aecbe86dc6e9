"""Real ``serve`` and ``worker`` processes for the service tests, and clients that post to them."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import hmac
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WRITE_KEY = "wk-test-3f9a1c7e5b"
SIGNING_SECRET = "sig-test-8d2e4a6c0b"
CONSENT = {"consent": {"canonical": {"marketing": True}}}
SERVICE_ENV = {"SIGNAL_WRITE_KEYS": WRITE_KEY, "SIGNAL_SIGNING_SECRET": SIGNING_SECRET, "PYTHONUNBUFFERED": "1"}


def identify(i: int, tag: str = "svc") -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"{tag}-id-{i}",
        "userId": f"{tag}-user-{i}",
        "context": CONSENT,
        "traits": {"email": f"{tag}{i}@service.test", "firstName": f"F{i}", "lastName": "Service"},
    }


def lead(i: int, tag: str = "svc") -> dict[str, Any]:
    """A lead without traits: its email can only come from the identify."""
    return {
        "type": "track",
        "event": "Demo Requested",
        "messageId": f"{tag}-lead-{i}",
        "userId": f"{tag}-user-{i}",
        "context": CONSENT,
    }


def page(i: int, tag: str = "svc") -> dict[str, Any]:
    return {"type": "page", "messageId": f"{tag}-page-{i}", "anonymousId": f"anon-{i}"}


class Service:
    """One ``signal-engine`` process; stdout lines collected as they come, stderr in a file.

    ``serve`` and ``worker`` print outcome lines only on stdout; what they say about themselves
    (``listening on URL``, ``metrics on URL``, ``worker NAME consuming ...``) is on stderr.
    """

    def __init__(self, *args: str | Path, cwd: Path, env: dict[str, str] | None = None, name: str = "service") -> None:
        self.stderr_path = cwd / f"{name}-{time.monotonic_ns()}.err"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *map(str, args)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, **SERVICE_ENV, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float = 30, *, stream: str = "stdout") -> re.Match[str]:
        """The first line of ``stream`` (``stdout`` or ``stderr``) that ``pattern`` finds."""
        regex = re.compile(pattern)
        read = (lambda: list(self.lines)) if stream == "stdout" else (lambda: self.stderr().splitlines())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in read():
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None:
                self._reader.join(2)
                break
            time.sleep(0.02)
        raise AssertionError(
            f"no {stream} line matching {pattern!r}; stdout: {self.lines[-5:]}; stderr: {self.stderr()[-2000:]}"
        )

    def wait_for_notice(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """A line the process says about itself on stderr (listening, metrics, consuming)."""
        return self.wait_for_line(pattern, timeout, stream="stderr")

    @property
    def url(self) -> str:
        return self.wait_for_notice(r"^listening on (http://\S+)$").group(1)

    def outcomes(self) -> list[dict[str, Any]]:
        """Every stdout line, each parsed as the JSON object it must be."""
        return [json.loads(line) for line in list(self.lines)]

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text()

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        self._stderr.close()


def post(url: str, path: str, body: Any, headers: dict[str, str], *, compress: bool = False) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    if compress:
        raw = gzip.compress(raw)
        headers = {**headers, "Content-Encoding": "gzip"}
    return send(url + path, raw, headers)


def send(url: str, raw: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=raw, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def write_key_headers(key: str = WRITE_KEY) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def post_signed(url: str, body: Any, secret: str = SIGNING_SECRET) -> tuple[int, Any]:
    raw = json.dumps(body).encode()
    stamp = str(int(time.time() * 1000))
    signature = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return send(url + "/v1/events", raw, {"X-Timestamp": stamp, "X-Signature": f"sha256={signature}"})


def until(condition: Callable[[], bool], timeout: float = 60, what: str | Callable[[], str] = "condition") -> None:
    """Poll ``condition``; on timeout say what was awaited (``what`` may be computed then, to show the state)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.05)


def queue_leases(state: Path, integration: str | None = None) -> int:
    """How many of an embedded ``serve``'s queue rows (of one integration, or all) are leased now.

    Read beside the service, never blocking it (the queue is in WAL mode)."""
    sql = "SELECT count(*) FROM pending WHERE consumer IS NOT NULL"
    with contextlib.closing(sqlite3.connect(state / "queue.db", timeout=10)) as conn:
        if integration is None:
            return int(conn.execute(sql).fetchone()[0])
        return int(conn.execute(sql + " AND integration = ?", (integration,)).fetchone()[0])


@contextlib.contextmanager
def queue_writes_held(state: Path) -> Iterator[None]:
    """Hold the write lock of an embedded ``serve``'s queue (``<state>/queue.db``) while the block runs.

    Its acknowledgements (and new leases) wait behind the lock, while what it already leased is delivered,
    journalled (in ``state.db``) and printed: the window between "delivered" and "acknowledged" that a
    kill -9 otherwise hits only by chance. The lock goes with the block, within the service's busy timeout.
    """
    conn = sqlite3.connect(state / "queue.db", timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()


__all__ = [
    "REPO",
    "SIGNING_SECRET",
    "WRITE_KEY",
    "Service",
    "identify",
    "lead",
    "page",
    "post",
    "post_signed",
    "queue_leases",
    "queue_writes_held",
    "signal",
    "until",
    "write_key_headers",
]
