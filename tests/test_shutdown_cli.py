"""SIGTERM, SIGINT and a closed stdout end a real ``signal-engine run`` cleanly.

Each test runs the CLI as a process against the Outreach sandbox
(``engine/sandbox/outreach.py``) on loopback, with ``delay:`` faults so that
requests are on the wire when the signal arrives (the sandbox counts them:
``in_flight``). What is checked is what the issue promised:

* no more input is read; what is on the wire finishes within ``--grace``;
* every line read has exactly one outcome line, and every delivered one is
  in the journal, every other one in the dead letters (``not_sent`` or
  ``interrupted``), so ``dlq replay`` completes the run;
* every prospect the sandbox created has its outcome line;
* the exit status says how the run ended (143, 130, 141) and stderr says
  where it stopped, in one line, without a traceback.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.state.journal import event_key
from engine.state.sqlite import SqliteState
from test_delivery_sandbox import ThreadedSandbox, fast_preset, json_lines, unique_credentials, write_settings
from test_state_durability import PRESET_NAME, engine_cmd, ndjson, run_cli, streaming, until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals")

CONSENT = {"consent": {"canonical": {"marketing": True}}}


def lead(i: int) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Signed Up",
        "messageId": f"lead-{i}",
        "userId": f"user-{i}",
        "traits": {"email": f"person{i}@stop.test"},
        "context": CONSENT,
    }


def created_emails(sandbox: ThreadedSandbox) -> list[str]:
    return sorted(p["attributes"]["emails"][0] for p in sandbox.state()["prospects"])


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr and "Exception ignored" not in stderr


def journaled(state_dir: Path, indexes: range) -> set[int]:
    state = SqliteState(state_dir)
    try:
        journal = state.journal(PRESET_NAME, 86400)
        return {i for i in indexes if journal.delivered_at(event_key(lead(i))) is not None}
    finally:
        state.close()


def dead_letters(state_dir: Path) -> dict[str, str]:
    state = SqliteState(state_dir)
    try:
        return {e["messageId"]: e["cause"] for e in state.dead_letters().entries(PRESET_NAME)}
    finally:
        state.close()


# --------------------------------------------------------------------------
# SIGTERM and SIGINT: drain the wire, dead-letter what was not sent
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_the_wire_and_dead_letters_what_was_not_sent(tmp_path: Path, sig: int, code: int) -> None:
    creds = unique_credentials()
    state_dir = tmp_path / "state"
    preset = fast_preset(tmp_path)  # concurrency 8
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        with streaming(
            "run", preset, "--events", "-", "--settings", settings, "--state", state_dir, cwd=tmp_path
        ) as run:
            run.feed([lead(i) for i in range(10)])
            until(lambda: len(run.lines) == 10, what="the first ten outcomes")
            sandbox.faults(*["delay:1.5"] * 8)
            run.feed([lead(i) for i in range(10, 30)])  # 8 go on the wire, 12 wait for a free slot
            until(lambda: sandbox.state()["in_flight"] == 8, what="eight requests on the wire")
            run.stop(sig)  # stdin stays open: the reader is blocked on it
            outcomes, stderr = run.lines, run.stderr
        returncode = run.proc.returncode
        created = created_emails(sandbox)
        delivered, letters = journaled(state_dir, range(30)), dead_letters(state_dir)
        replay = run_cli("dlq", "replay", preset, "--settings", settings, "--state", state_dir, cwd=tmp_path)
        after = sandbox.state()

    assert returncode == code, stderr
    assert_clean_stderr(stderr)
    # Every line read has exactly one outcome, in input order.
    assert [o["index"] for o in outcomes] == list(range(30))
    kinds = [(o["outcome"], o.get("cause")) for o in outcomes]
    assert kinds == [("delivered", None)] * 18 + [("dead_lettered", "not_sent")] * 12
    # Every prospect the sandbox created has its outcome line (and nothing more was created).
    assert created == sorted(f"person{o['index']}@stop.test" for o in outcomes if o["outcome"] == "delivered")
    # ...and its record: delivered in the journal, the rest in the dead letters.
    assert delivered == set(range(18))
    assert letters == {f"lead-{i}": "not_sent" for i in range(18, 30)}
    name = signal.Signals(sig).name
    assert f"signal-engine: {name}: stopping; no more input is read; 8 request(s) on the wire get up to 30s" in stderr
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith(
        f"signal-engine: stopped by {name} after reading 30 line(s) of --events -; "
        "the rest was not read (rerun the same input with the same --state"
    )
    assert "30 event(s) in " in summary and "18 delivered, 12 dead_lettered (12 not_sent)" in summary
    # The dead letters complete the run: each lead exactly once.
    assert replay.returncode == 0, replay.stderr
    assert [o["outcome"] for o in json_lines(replay.stdout)] == ["delivered"] * 12
    assert len(after["prospects"]) == 30 and after["creates"] == 30
    assert after["requests_by_status"].get("422", 0) == 0


def test_the_grace_period_runs_out_the_wire_is_dead_lettered_and_replay_merges_what_arrived(tmp_path: Path) -> None:
    creds = unique_credentials()
    state_dir = tmp_path / "state"
    preset = fast_preset(tmp_path)
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        with streaming(
            "run", preset, "--events", "-", "--settings", settings, "--state", state_dir, "--grace", "0.3", cwd=tmp_path
        ) as run:
            run.feed([lead(0)])
            until(lambda: len(run.lines) == 1, what="the first outcome")
            sandbox.faults(*["delay:5"] * 3)
            run.feed([lead(i) for i in range(1, 4)])
            until(lambda: sandbox.state()["in_flight"] == 3, what="three requests on the wire")
            started = time.monotonic()
            run.stop(signal.SIGTERM)
            stopped_in = time.monotonic() - started
            outcomes, stderr = run.lines, run.stderr
        until(lambda: sandbox.state()["in_flight"] == 0, what="the sandbox to finish the cut-off requests")
        letters = dead_letters(state_dir)
        replay = run_cli("dlq", "replay", preset, "--settings", settings, "--state", state_dir, cwd=tmp_path)
        after = sandbox.state()

    assert run.proc.returncode == 143
    assert_clean_stderr(stderr)
    assert stopped_in < 4  # it did not wait for the 5 s answers (--grace 0.3)
    assert [(o["index"], o["outcome"], o.get("cause"), o.get("attempts")) for o in outcomes] == [
        (0, "delivered", None, 1)
    ] + [(i, "dead_lettered", "interrupted", 1) for i in range(1, 4)]
    assert all("the destination may have it" in o["detail"] for o in outcomes[1:])
    assert letters == {f"lead-{i}": "interrupted" for i in range(1, 4)}
    # Whatever reached the destination is merged by the replay, never duplicated.
    assert replay.returncode == 0, replay.stderr
    assert [o["outcome"] for o in json_lines(replay.stdout)] == ["delivered"] * 3
    assert sorted(p["attributes"]["emails"][0] for p in after["prospects"]) == sorted(
        f"person{i}@stop.test" for i in range(4)
    )


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    creds = unique_credentials()
    state_dir = tmp_path / "state"
    preset = fast_preset(tmp_path)
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        with streaming(
            "run", preset, "--events", "-", "--settings", settings, "--state", state_dir, cwd=tmp_path
        ) as run:
            run.feed([lead(0)])
            until(lambda: len(run.lines) == 1, what="the first outcome")
            sandbox.faults("delay:20", "delay:20")
            run.feed([lead(1), lead(2)])
            until(lambda: sandbox.state()["in_flight"] == 2, what="two requests on the wire")
            run.proc.send_signal(signal.SIGINT)
            until(lambda: "stopping" in run.stderr, what="the first signal's notice")
            started = time.monotonic()
            run.stop(signal.SIGINT)
            stopped_in = time.monotonic() - started
            outcomes, stderr = run.lines, run.stderr
    assert run.proc.returncode == 130
    assert stopped_in < 10  # not the 20 s answers, not the 30 s grace
    assert (
        "SIGINT again: stopping; no more input is read; 2 request(s) still on the wire are dead-lettered now" in stderr
    )
    assert [(o["outcome"], o.get("cause")) for o in outcomes] == [
        ("delivered", None),
        ("dead_lettered", "interrupted"),
        ("dead_lettered", "interrupted"),
    ]


# --------------------------------------------------------------------------
# a closed stdout (EPIPE): `run | head -5`
# --------------------------------------------------------------------------


def test_a_closed_stdout_drains_records_and_exits_141_with_one_line(tmp_path: Path) -> None:
    creds = unique_credentials()
    state_dir = tmp_path / "state"
    preset = fast_preset(tmp_path)
    leads = 100
    events = tmp_path / "leads.ndjson"
    events.write_text(ndjson([lead(i) for i in range(leads)]), encoding="utf-8")
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        sandbox.admin("POST", "faults", {"fault_mix": {"delay:0.2": 1.0}})  # every answer takes a while
        proc = subprocess.Popen(
            engine_cmd("run", preset, "--events", events, "--settings", settings, "--state", state_dir),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None and proc.stderr is not None
        head = [proc.stdout.readline() for _ in range(5)]  # `| head -5`
        proc.stdout.close()
        stderr = proc.stderr.read().decode("utf-8")
        returncode = proc.wait(60)
        created = created_emails(sandbox)
        delivered, letters = journaled(state_dir, range(leads)), dead_letters(state_dir)
        sandbox.admin("POST", "faults", {"fault_mix": {}})
        rerun = run_cli("run", preset, "--events", events, "--settings", settings, "--state", state_dir, cwd=tmp_path)
        after_rerun = dead_letters(state_dir)
        replay = run_cli("dlq", "replay", preset, "--settings", settings, "--state", state_dir, cwd=tmp_path)
        after = sandbox.state()

    assert [json.loads(line)["index"] for line in head] == [0, 1, 2, 3, 4]
    assert returncode == 141
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr  # one line, no traceback
    assert lines[0].startswith("signal-engine: stdout was closed (broken pipe) after reading ")
    read = int(lines[0].split("after reading ")[1].split(" ")[0])
    assert "outcome line(s) not printed" in lines[0]
    # Drained and recorded: every line read is in the journal or the dead letters, and every
    # prospect the sandbox created is a journaled delivery.
    assert delivered | {int(m.split("-")[1]) for m in letters} == set(range(read))
    assert not delivered & {int(m.split("-")[1]) for m in letters}
    assert set(letters.values()) <= {"not_sent"}
    assert created == sorted(f"person{i}@stop.test" for i in delivered)
    # The rerun skips what was delivered and sends the rest; the replay then finds nothing new to send.
    assert rerun.returncode == 0, rerun.stderr
    assert sum(1 for o in json_lines(rerun.stdout) if o["attempts"] == 0) == len(delivered)
    assert after_rerun == {}  # the rerun delivered the unsent events, so their letters are gone
    assert replay.returncode == 0, replay.stderr
    assert len(after["prospects"]) == leads and after["creates"] == leads


# --------------------------------------------------------------------------
# a dry run waiting on its input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_dry_run_waiting_for_input_stops_on_a_signal(tmp_path: Path, sig: int, code: int) -> None:
    with streaming("run", PRESET_NAME, "--events", "-", "--dry-run", cwd=tmp_path) as run:
        run.feed([lead(i) for i in range(3)])
        until(lambda: len(run.lines) == 3, what="three outcomes")
        run.stop(sig)
        stderr = run.stderr
    assert run.proc.returncode == code
    assert_clean_stderr(stderr)
    name = signal.Signals(sig).name
    assert stderr.strip().splitlines() == [
        f"signal-engine: stopped by {name} after reading 3 line(s) of --events -; "
        f"the rest was not read: 3 event(s) in " + stderr.split("3 event(s) in ")[1].strip()
    ]
    assert stderr.strip().endswith(": 3 would_send")


# --------------------------------------------------------------------------
# dlq replay stopped by a signal
# --------------------------------------------------------------------------


def test_a_replay_stopped_by_sigterm_finishes_the_wire_and_leaves_the_other_letters_as_they_were(
    tmp_path: Path,
) -> None:
    creds = unique_credentials()
    state_dir = tmp_path / "state"
    preset = fast_preset(tmp_path)  # concurrency 8
    events = tmp_path / "leads.ndjson"
    events.write_text(ndjson([lead(i) for i in range(10)]), encoding="utf-8")
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        sandbox.admin("POST", "faults", {"fault_mix": {"500": 1.0}})
        first = run_cli("run", preset, "--events", events, "--settings", settings, "--state", state_dir, cwd=tmp_path)
        before = dead_letters(state_dir)
        sandbox.admin("POST", "faults", {"fault_mix": {}, "faults": ["delay:1.5"] * 8})
        proc = subprocess.Popen(
            engine_cmd("dlq", "replay", preset, "--settings", settings, "--state", state_dir),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        until(lambda: sandbox.state()["in_flight"] == 8, what="eight replays on the wire")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        after = dead_letters(state_dir)
        created = created_emails(sandbox)

    assert first.returncode == 1 and set(before.values()) == {"http_500"} and len(before) == 10
    assert proc.returncode == 143, err
    assert_clean_stderr(err)
    outcomes = json_lines(out)
    assert (
        sorted((o["outcome"], o.get("cause")) for o in outcomes)
        == [("dead_lettered", "not_sent")] * 2 + [("delivered", None)] * 8
    )
    assert err.strip().splitlines()[-1] == (
        "signal-engine: replayed 8, delivered 8, 2 left in the dead-letter store; "
        "stopped by SIGTERM: 2 letter(s) not replayed"
    )
    assert len(created) == 8
    # The two not replayed are untouched: same cause, same attempts as before.
    assert after == dict.fromkeys(after, "http_500") and len(after) == 2
    assert {f"person{m.split('-')[1]}@stop.test" for m in after}.isdisjoint(created)


def test_any_command_whose_stdout_is_closed_says_so_in_one_line_and_exits_141(tmp_path: Path) -> None:
    proc = subprocess.Popen(engine_cmd("schema"), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode("utf-8")
    assert proc.wait(30) == 141
    assert err == "signal-engine: stdout was closed (broken pipe); stopped\n"


def test_a_dry_run_piped_into_head_stops_reading_and_says_where(tmp_path: Path) -> None:
    events = tmp_path / "leads.ndjson"
    events.write_text(ndjson([lead(i) for i in range(5000)]), encoding="utf-8")  # several reads' worth
    proc = subprocess.Popen(
        engine_cmd("run", PRESET_NAME, "--events", events, "--dry-run"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode("utf-8")
    assert proc.wait(60) == 141
    assert json.loads(first)["index"] == 0
    assert len(err.splitlines()) == 1 and err.startswith(
        "signal-engine: stdout was closed (broken pipe) after reading "
    )
    read = int(err.split("after reading ")[1].split(" ")[0].replace(",", ""))
    assert read < 5000  # it stopped reading, rather than running the whole file into a closed pipe


# --------------------------------------------------------------------------
# outcome lines reach a pipe as they happen, not when the buffer fills
# --------------------------------------------------------------------------


def test_a_delivering_run_flushes_each_outcome_to_a_pipe_while_it_waits_for_more_input(tmp_path: Path) -> None:
    """Without PYTHONUNBUFFERED (a pipe is block-buffered): each lead's line arrives before the next is fed."""
    creds = unique_credentials()
    preset = fast_preset(tmp_path)
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        proc = subprocess.Popen(
            engine_cmd("run", preset, "--events", "-", "--settings", settings, "--state", tmp_path / "state"),
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for i in range(3):
                proc.stdin.write(ndjson([lead(i)]))
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], 20)
                assert ready, f"lead {i}'s outcome line was not flushed while the run waited for input"
                line = json.loads(proc.stdout.readline())
                assert (line["index"], line["outcome"]) == (i, "delivered")
            proc.stdin.close()
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
