"""The record's bounds from the command line: ``--record-limit N`` and ``--record-days DAYS``.

Through the real CLI: what a ``run``, a ``serve`` and a Redis ``worker``
keep, read back from their stores; and each bad value or contradiction is
one line and exit 2 on every command that records.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from redis_server import needs_redis, redis_server, redis_url  # noqa: F401 - fixtures
from service_helpers import Service, post_signed, until
from test_delivery_sandbox import cli, fast_preset, unique_credentials, write_settings

DAY = 86_400
# Page views are dropped by the preset: nothing is sent, so no destination is needed to record them.
NOWHERE = "http://127.0.0.1:9"


def pages(tmp_path: Path, name: str, ids: list[str]) -> Path:
    path = tmp_path / f"{name}.ndjson"
    path.write_text("".join(json.dumps({"type": "page", "messageId": i, "anonymousId": "a"}) + "\n" for i in ids))
    return path


def kept(state: Path) -> list[str]:
    """The messageIds of the record in ``state``, oldest first."""
    with sqlite3.connect(state / "state.db") as db:
        return [json.loads(text)["messageId"] for (text,) in db.execute("SELECT entry FROM record ORDER BY seq")]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    return fast_preset(tmp_path), write_settings(tmp_path / "settings.yaml", NOWHERE, unique_credentials())


def run(preset: Path, settings: Path, events: Path, state: Path, *flags: str) -> None:
    proc = cli("run", preset, "--events", events, "--settings", settings, "--state", state, *flags)
    assert proc.returncode == 0, proc.stderr


def test_run_record_limit_keeps_the_newest_and_a_lower_one_later_trims_at_once(
    tmp_path: Path, setup: tuple[Path, Path]
) -> None:
    preset, settings = setup
    state = tmp_path / "state"
    run(preset, settings, pages(tmp_path, "five", [f"p-{i}" for i in range(5)]), state, "--record-limit", "3")
    assert kept(state) == ["p-2", "p-3", "p-4"]
    run(preset, settings, pages(tmp_path, "one", ["q-0"]), state, "--record-limit", "2")
    assert kept(state) == ["p-4", "q-0"]
    run(preset, settings, pages(tmp_path, "two", ["r-0", "r-1"]), state)  # the default: 10,000
    assert kept(state) == ["p-4", "q-0", "r-0", "r-1"]


def test_run_record_days_forgets_what_is_older(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    preset, settings = setup
    state = tmp_path / "state"
    run(preset, settings, pages(tmp_path, "old", ["old-0", "old-1"]), state)
    with sqlite3.connect(state / "state.db") as db:  # two days pass
        db.execute("UPDATE record SET at = at - ?", (2 * DAY,))
    run(preset, settings, pages(tmp_path, "new", ["new-0"]), state, "--record-days", "3")
    assert kept(state) == ["old-0", "old-1", "new-0"]  # two days old: kept for three
    run(preset, settings, pages(tmp_path, "newer", ["new-1"]), state, "--record-days", "1.5")
    assert kept(state) == ["new-0", "new-1"]


def test_serve_record_limit_bounds_what_it_records(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    preset, settings = setup
    state = tmp_path / "state"
    serve = Service(
        "serve", preset, "--settings", settings, "--state", state, "--port", "0", "--record-limit", "2", cwd=tmp_path
    )
    try:
        for i in range(4):
            assert post_signed(serve.url, {"type": "page", "messageId": f"s-{i}", "anonymousId": "a"})[0] == 200
        until(lambda: len(serve.outcomes()) == 4, what=lambda: f"four outcomes; stderr: {serve.stderr()}")
        serve.signal(signal.SIGTERM)  # the record's last batch is written as it stops
        assert serve.wait(30) == 0, serve.stderr()
    finally:
        serve.stop()
    assert kept(state) == ["s-2", "s-3"]


@needs_redis
def test_a_redis_worker_record_limit_bounds_its_stream(
    tmp_path: Path, setup: tuple[Path, Path], redis_url: str
) -> None:
    import redis

    preset, settings = setup
    serve = Service("serve", preset, "--settings", settings, "--redis", redis_url, "--port", "0", cwd=tmp_path)
    worker = Service(
        "worker", preset, "--settings", settings, "--redis", redis_url, "--record-limit", "3", cwd=tmp_path
    )
    try:
        for i in range(5):
            assert post_signed(serve.url, {"type": "page", "messageId": f"w-{i}", "anonymousId": "a"})[0] == 200
        until(lambda: len(worker.outcomes()) == 5, what=lambda: f"five outcomes; stderr: {worker.stderr()}")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.stderr()
    finally:
        worker.stop()
        serve.stop()
    client = redis.Redis.from_url(redis_url)
    streams = list(client.scan_iter("*record:*"))
    assert len(streams) == 1, streams
    entries = client.xrange(streams[0])
    assert [json.loads(fields[b"e"])["messageId"] for _, fields in entries] == ["w-2", "w-3", "w-4"]


@pytest.mark.parametrize("command", ["run", "serve", "worker", "dlq replay"])
@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--record-limit", "0"], "argument --record-limit: must be a whole number of events, 1 or more, got '0'"),
        (["--record-limit", "1e3"], "argument --record-limit: must be a whole number of events, 1 or more, got '1e3'"),
        (["--record-days", "0"], "argument --record-days: must be more than 0 days, got 0"),
        (["--record-days", "soon"], "argument --record-days: not a number of days: 'soon'"),
    ],
)
def test_a_bad_record_bound_is_one_line_and_exit_2(command: str, flags: list[str], says: str) -> None:
    proc = cli(*command.split(), "outreach/lead-capture", *flags)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].endswith(says), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bound_beside_no_record_is_refused(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    preset, settings = setup
    events = pages(tmp_path, "one", ["x"])
    proc = cli("run", preset, "--events", events, "--settings", settings, "--no-record", "--record-days", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "signal-engine: --record-days bounds the record that --no-record turns off: pass one or the other"
    )


def test_the_help_texts_defaults_are_the_records() -> None:
    from engine.cli.record_options import DEFAULT_DAYS, DEFAULT_LIMIT
    from engine.state.record import DEFAULT_MAX_AGE_SECONDS, DEFAULT_PER_INTEGRATION

    assert (DEFAULT_LIMIT, DEFAULT_DAYS * DAY) == (DEFAULT_PER_INTEGRATION, DEFAULT_MAX_AGE_SECONDS)
