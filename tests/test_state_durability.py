"""The state across real processes: kill -9, a full disk, a replay beside a run, the refresh lock.

Every engine here is a real ``signal-engine`` process talking to the Outreach
sandbox (``engine/sandbox/outreach.py``) on loopback; assertions are made on
what the sandbox saw and on what the next process finds in the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.state.sqlite import SqliteState
from test_delivery_sandbox import ThreadedSandbox, fast_preset, json_lines, unique_credentials, write_settings

PRESET_NAME = "outreach/lead-capture"
CONSENT = {"consent": {"canonical": {"marketing": True}}}
ATTEMPT_LINE = re.compile(r"event (\d+) attempt \d+: (?:GET|POST|PATCH) \S+ -> \S+")


def identify(i: int, domain: str = "kill.test") -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"id-{i}",
        "userId": f"user-{i}",
        "context": CONSENT,
        "traits": {"email": f"person{i}@{domain}", "firstName": f"First{i}", "lastName": "Person"},
    }


def track(i: int, prefix: str = "track") -> dict[str, Any]:
    """A lead event without traits: its email can only come from the identity memory."""
    return {
        "type": "track",
        "event": "Signed Up",
        "messageId": f"{prefix}-{i}",
        "userId": f"user-{i}",
        "context": CONSENT,
    }


def ndjson(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def engine_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "engine", *map(str, args)]


def run_cli(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        engine_cmd(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def until(condition: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Streaming:
    """A ``run --events -`` process fed line by line, its outcome lines collected as they come."""

    def __init__(self, *args: str | Path, cwd: Path) -> None:
        self.stderr_path = cwd / f"stderr-{time.monotonic_ns()}.txt"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            engine_cmd(*args),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.lines.append(json.loads(line))

    def feed(self, events: list[dict[str, Any]]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(ndjson(events))
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(10)
        self._reader.join(5)

    @property
    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()


@contextlib.contextmanager
def streaming(*args: str | Path, cwd: Path) -> Iterator[Streaming]:
    run = Streaming(*args, cwd=cwd)
    try:
        yield run
    finally:
        run.close()


def journal_size(state_dir: Path) -> int:
    state = SqliteState(state_dir)
    try:
        return len(state.journal(PRESET_NAME, 86400))
    finally:
        state.close()


# --------------------------------------------------------------------------
# kill -9 mid-run, then restart
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_run_killed_mid_delivery_then_restarted_loses_nothing_and_resends_nothing(tmp_path: Path, sig: int) -> None:
    """kill -9 loses what was on the wire (the upsert merges its re-send); SIGTERM lets it finish first."""
    users = 200
    drained = sig == signal.SIGTERM  # the three requests on the wire finish within the grace period
    done_before = 60 if drained else 57
    creds = unique_credentials()
    state_dir = tmp_path / "state"
    preset = fast_preset(tmp_path)
    with ThreadedSandbox(**creds) as sandbox:  # one mint a minute, as Outreach: a restart must not need another
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        with streaming(
            "run", preset, "--events", "-", "--settings", settings, "--state", state_dir, cwd=tmp_path
        ) as first:
            first.feed([identify(i) for i in range(users)] + [track(i) for i in range(50)])
            until(lambda: len(first.lines) == users + 50, what="the first 50 leads")
            # Three requests hang on the wire; seven more are delivered but not yet printed
            # (outcomes are printed in input order).
            sandbox.faults("delay:2", "delay:2", "delay:2")
            first.feed([track(i) for i in range(50, 60)])
            until(lambda: journal_size(state_dir) == 57, what="seven more deliveries in the journal")
            first.stop(sig)
            printed = {o["messageId"] for o in first.lines if o["outcome"] == "delivered"}
        assert len(printed) == (60 if drained else 50)
        assert first.proc.returncode == (143 if drained else -signal.SIGKILL)
        assert journal_size(state_dir) == done_before

        tracks = tmp_path / "tracks.ndjson"
        tracks.write_text(ndjson([track(i) for i in range(users)]), encoding="utf-8")
        second = run_cli(
            "run", preset, "--events", tracks, "--settings", settings, "--state", state_dir, "--verbose", cwd=tmp_path
        )
        # The hung requests of the killed run may still finish on the sandbox's side, before or
        # after the restart sends the same leads: either way each email is created once.
        final = sandbox.state()

    assert second.returncode == 0, second.stderr
    outcomes = json_lines(second.stdout)
    assert [o["messageId"] for o in outcomes] == [f"track-{i}" for i in range(users)]
    # Nothing lost, and identity intact: every lead delivered, its email from an identify
    # that only the killed process ever saw.
    assert [o["outcome"] for o in outcomes] == ["delivered"] * users
    assert sorted(p["attributes"]["emails"][0] for p in final["prospects"]) == sorted(
        f"person{i}@kill.test" for i in range(users)
    )
    # Nothing re-sent: what the killed run delivered (printed or only journaled) is skipped, unsent.
    skipped = {o["messageId"]: o for o in outcomes if o["attempts"] == 0}
    assert printed <= set(skipped) and len(skipped) == done_before
    assert all("already delivered" in o["detail"] for o in skipped.values())
    sent = {int(m.group(1)) for m in ATTEMPT_LINE.finditer(second.stderr)}
    assert sent == {o["index"] for o in outcomes if o["attempts"] > 0}
    assert len(sent) == users - done_before
    # The three on the wire at the kill may have been sent twice; the upsert merged them.
    assert final["creates"] == users and len(final["prospects"]) == users
    assert final["statuses"].count(422) <= (0 if drained else 3)
    assert final["mints"] == 1  # the restart reused the persisted access token


# --------------------------------------------------------------------------
# a full disk, for real (a tiny tmpfs)
# --------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the full disk is simulated in test_state_store.py")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        block = b"\1" * 4096
        with contextlib.suppress(OSError):
            while True:
                handle.write(block)
    return filler


def test_a_full_state_disk_keeps_dead_letters_and_spends_no_refresh_token(tmp_path: Path) -> None:
    creds = unique_credentials()
    leads = 20
    with tiny_filesystem(tmp_path / "disk", "2m") as disk, ThreadedSandbox(**creds) as sandbox:
        state_dir = disk / "state"
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        with streaming(
            "run", PRESET_NAME, "--events", "-", "--settings", settings, "--state", state_dir, cwd=tmp_path
        ) as run:
            run.feed([identify(0, "disk.test")])  # the state is open and has written once
            until(lambda: len(run.lines) == 1, what="the first outcome")
            filler = fill(disk)
            run.feed([{**track(i), "traits": {"email": f"person{i}@disk.test"}} for i in range(leads)])
            until(lambda: len(run.lines) == 1 + leads, what="the leads' outcomes")
            during = sandbox.state()
            filler.unlink()  # space comes back before the run ends
            code = run.finish()
            outcomes, stderr = run.lines[1:], run.stderr
        listed = run_cli("dlq", "list", PRESET_NAME, "--state", state_dir, cwd=tmp_path)
        replay = run_cli("dlq", "replay", PRESET_NAME, "--settings", settings, "--state", state_dir, cwd=tmp_path)
        after = sandbox.state()

    assert code == 1
    assert {o["outcome"] for o in outcomes} == {"dead_lettered"}
    assert all("kept in memory" in o["detail"] for o in outcomes)
    assert during["token_statuses"] == []  # no refresh spent while the rotated token could not be kept
    assert "state: could not write" in stderr and "full" in stderr  # loud, on stderr
    assert "Traceback" not in stderr
    assert sorted(e["messageId"] for e in json_lines(listed.stdout)) == sorted(f"track-{i}" for i in range(leads))
    # The next run is not reauthorisation_required: every letter is delivered.
    assert replay.returncode == 0, replay.stderr
    assert [o["outcome"] for o in json_lines(replay.stdout)] == ["delivered"] * leads
    assert after["token_statuses"] == [200] and len(after["prospects"]) == leads


# --------------------------------------------------------------------------
# a dlq replay beside a run
# --------------------------------------------------------------------------


def test_a_replay_beside_a_run_loses_no_dead_letter(tmp_path: Path) -> None:
    creds = unique_credentials()
    state_dir = tmp_path / "state"
    letters = 8
    with ThreadedSandbox(**creds) as sandbox:
        # Dead letters waiting for a re-authorisation: the first run had a revoked token.
        revoked = write_settings(tmp_path / "revoked.yaml", sandbox.base_url, {**creds, "refresh_token": "revoked-1"})
        old = tmp_path / "old.ndjson"
        old.write_text(
            ndjson([{**track(i, "old"), "traits": {"email": f"old{i}@replay.test"}} for i in range(letters)]),
            encoding="utf-8",
        )
        seeded = run_cli("run", PRESET_NAME, "--events", old, "--settings", revoked, "--state", state_dir, cwd=tmp_path)
        assert seeded.returncode == 1 and seeded.stdout.count("reauthorisation_required") == letters

        # Re-authorised: the replay runs, slowly (each create takes 3 s) ...
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        sandbox.faults(*["delay:3"] * letters)
        replay = subprocess.Popen(
            engine_cmd("dlq", "replay", PRESET_NAME, "--settings", settings, "--state", state_dir),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            until(lambda: sandbox.state()["mints"] == 1, what="the replay to start sending")
            # ... while a run on the same state adds new dead letters (its app's credentials are wrong).
            wrong = write_settings(
                tmp_path / "wrong.yaml",
                sandbox.base_url,
                {**creds, "client_id": "another-app", "refresh_token": "another-token"},
            )
            new = tmp_path / "new.ndjson"
            new.write_text(
                ndjson([{**track(i, "new"), "traits": {"email": f"new{i}@replay.test"}} for i in range(letters)]),
                encoding="utf-8",
            )
            beside = run_cli(
                "run", PRESET_NAME, "--events", new, "--settings", wrong, "--state", state_dir, cwd=tmp_path
            )
            overlapped = replay.poll() is None
            out, err = replay.communicate(timeout=60)
        finally:
            if replay.poll() is None:
                replay.kill()
        listed = run_cli("dlq", "list", PRESET_NAME, "--state", state_dir, cwd=tmp_path)
        final = sandbox.state()

    assert overlapped, "the run finished after the replay: they did not overlap"
    assert beside.stdout.count('"dead_lettered"') == letters
    assert replay.returncode == 0, err
    assert [o["outcome"] for o in json_lines(out)] == ["delivered"] * letters
    assert sorted(p["attributes"]["emails"][0] for p in final["prospects"]) == sorted(
        f"old{i}@replay.test" for i in range(letters)
    )
    # Every letter the run added while the replay worked is still there; none of the replayed ones is.
    assert sorted(e["messageId"] for e in json_lines(listed.stdout)) == sorted(f"new-{i}" for i in range(letters))


# --------------------------------------------------------------------------
# the cross-process refresh lock
# --------------------------------------------------------------------------


class TokenServer:
    """A rotating token endpoint that holds the first refresh until a second one arrives (or 1.5 s pass).

    Two processes refreshing at once with the same refresh token would both
    reach it; with the lock only one does. The rotation is checked when the
    answer is given, as a real server would see the second use of a spent token.
    """

    def __init__(self) -> None:
        self.current = "lock-refresh-0"
        self.statuses: list[int] = []
        self.creates = 0
        self.loop = asyncio.new_event_loop()
        self.base_url = ""
        self.requests = 0
        self._second: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert self._second is not None
        self.requests += 1
        if self.requests == 1:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._second.wait(), 1.5)
        else:
            self._second.set()
        if form.get("refresh_token") != self.current:
            self.statuses.append(400)
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.current = f"lock-refresh-{len(self.statuses) + 1}"
        self.statuses.append(200)
        return web.json_response(
            {"access_token": f"lock-access-{len(self.statuses)}", "expires_in": 7200, "refresh_token": self.current}
        )

    async def _create(self, request: web.Request) -> web.Response:
        self.creates += 1
        return web.json_response({"data": {"type": "prospect", "id": self.creates}}, status=201)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> web.AppRunner:
            self._second = asyncio.Event()
            app = web.Application()
            app.add_routes([web.post("/oauth/token", self._token), web.post("/api/v2/prospects", self._create)])
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
            return runner

        runner = self.loop.run_until_complete(start())
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> TokenServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def test_two_processes_sharing_a_state_directory_refresh_once(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with TokenServer() as server:
        creds = {"client_id": "cid", "client_secret": "lock-secret", "refresh_token": "lock-refresh-0"}
        settings = write_settings(tmp_path / "settings.yaml", server.base_url, creds)
        procs = []
        for n in range(2):
            events = tmp_path / f"events-{n}.ndjson"
            events.write_text(
                ndjson([{**track(n, f"proc{n}"), "traits": {"email": f"p{n}@lock.test"}}]), encoding="utf-8"
            )
            procs.append(
                subprocess.Popen(
                    engine_cmd("run", PRESET_NAME, "--events", events, "--settings", settings, "--state", state_dir),
                    cwd=tmp_path,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        results = [p.communicate(timeout=60) for p in procs]
        statuses, creates = list(server.statuses), server.creates

    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert json_lines(out)[0]["outcome"] == "delivered"
    assert statuses == [200]  # one refresh; the other process waited for the lock and took its tokens
    assert creates == 2


# --------------------------------------------------------------------------
# the default state directory, and identity across runs
# --------------------------------------------------------------------------


def test_the_default_state_directory_keeps_identity_tokens_and_the_journal_between_runs(tmp_path: Path) -> None:
    creds = unique_credentials()
    work = tmp_path / "work"
    work.mkdir()
    with ThreadedSandbox(**creds) as sandbox:  # a second mint within the minute would be throttled
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        (work / "identify.ndjson").write_text(ndjson([identify(7, "default.test")]), encoding="utf-8")
        (work / "track.ndjson").write_text(ndjson([track(7)]), encoding="utf-8")
        (work / "more.ndjson").write_text(
            ndjson([track(7), {**identify(8, "default.test"), "type": "identify"}, track(8)]), encoding="utf-8"
        )
        first = run_cli("run", PRESET_NAME, "--events", "identify.ndjson", "--settings", settings, cwd=work)
        second = run_cli("run", PRESET_NAME, "--events", "track.ndjson", "--settings", settings, cwd=work)
        third = run_cli("run", PRESET_NAME, "--events", "more.ndjson", "--settings", settings, cwd=work)
        listed = run_cli("dlq", "list", PRESET_NAME, cwd=work)
        final = sandbox.state()

    assert first.returncode == 0 and second.returncode == 0 and third.returncode == 0, third.stderr
    assert json_lines(first.stdout)[0]["reason"] == "event_not_mapped"
    # The identify of the first run identifies the lead of the second.
    [delivered] = json_lines(second.stdout)
    assert delivered["outcome"] == "delivered"
    assert delivered["request"]["body"]["data"]["attributes"]["emails"] == ["person7@default.test"]
    # The third run: the same lead is skipped (journal), a new one is sent with the stored token.
    again, _, new = json_lines(third.stdout)
    assert (again["outcome"], again["attempts"]) == ("delivered", 0)
    assert (new["outcome"], new["attempts"]) == ("delivered", 1)
    assert final["mints"] == 1 and final["creates"] == 2
    state_dir = work / ".signal-state"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "state.db").stat().st_mode) == 0o600
    assert "0 dead letter(s)" in listed.stderr
    assert sorted(p.name for p in work.iterdir()) == [".signal-state", "identify.ndjson", "more.ndjson", "track.ndjson"]
