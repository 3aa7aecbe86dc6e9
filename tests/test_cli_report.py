"""Progress while a run is long, one summary line at the end of every run, on stderr; JSON logs."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import outcome as oc
from engine.cli import main
from engine.cli import report as report_module
from engine.cli.log_handlers import JsonFormatter, configure_logging
from engine.cli.report import RunReport, wants_progress
from engine.outcome import Outcome, dropped
from engine.redaction import Redactor
from fakes import FakeTime

PRESET = "outreach/lead-capture"
LEAD = {
    "type": "track",
    "event": "Demo Requested",
    "userId": "u-1",
    "messageId": "m-1",
    "traits": {"email": "jane@acme.com"},
    "context": {"consent": {"canonical": {"marketing": True}}},
}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def would_send(i: int) -> Outcome:
    return Outcome(i, f"m{i}", oc.WOULD_SEND, request={})


def test_no_progress_before_one_interval_then_a_line_per_interval() -> None:
    clock = FakeTime()
    out = io.StringIO()
    report = RunReport(out, progress=True, clock=clock.monotonic, interval=1.0)
    for i in range(10):
        report.add(would_send(i))
    assert out.getvalue() == ""  # a short run shows no progress at all
    clock.now += 1.0
    report.add(dropped(10, "m10", oc.NO_CONSENT, "x"))
    clock.now += 0.5
    report.add(would_send(11))  # within the interval: no new line
    clock.now += 0.5
    report.add(dropped(12, "m12", oc.EVENT_NOT_MAPPED, "x"))
    lines = out.getvalue().splitlines()
    assert lines == [
        "signal-engine: 11 event(s), 11/s: 10 would_send, 1 dropped (1 no_consent)",
        "signal-engine: 13 event(s), 6/s: 11 would_send, 2 dropped (1 event_not_mapped, 1 no_consent)",
    ]


def test_on_a_terminal_progress_redraws_one_line_and_the_summary_replaces_it() -> None:
    clock = FakeTime()
    out = Terminal()
    report = RunReport(out, progress=True, clock=clock.monotonic, interval=1.0)
    report.add(would_send(0))
    clock.now += 2.0
    report.add(would_send(1))
    report.finish()
    text = out.getvalue()
    assert text == (
        "\r\x1b[Ksignal-engine: 2 event(s), 1/s: 2 would_send\r\x1b[Ksignal-engine: 2 event(s) in 2.0s: 2 would_send\n"
    )


def test_without_progress_only_the_summary_is_printed() -> None:
    clock = FakeTime()
    out = Terminal()
    report = RunReport(out, progress=False, clock=clock.monotonic)
    for i in range(3):
        clock.now += 5
        report.add(would_send(i))
    report.add(Outcome(3, "m3", oc.FAILED, cause="output_invalid"))
    report.add(Outcome(4, "m4", oc.DEAD_LETTERED, cause="http_500"))
    report.add(Outcome(5, "m5", oc.DELIVERED))
    report.finish("1 access token(s) minted")
    assert out.getvalue() == (
        "signal-engine: 6 event(s) in 15.0s: 1 delivered, 3 would_send, 1 failed "
        "(1 output_invalid), 1 dead_lettered (1 http_500); 1 access token(s) minted\n"
    )
    assert report.exit_code() == 1


def test_the_summary_of_an_empty_input_says_so() -> None:
    out = io.StringIO()
    RunReport(out, source="--events x.ndjson").finish()
    assert out.getvalue() == "signal-engine: no events: --events x.ndjson is empty\n"


def test_progress_is_automatic_on_a_terminal_and_forced_by_the_flag() -> None:
    assert wants_progress(None, Terminal()) is True
    assert wants_progress(None, io.StringIO()) is False
    assert wants_progress(True, io.StringIO()) is True
    assert wants_progress(False, Terminal()) is False


def test_the_progress_flag_of_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_module, "PROGRESS_INTERVAL", 0.0)  # every event is "long" enough
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(LEAD) + "\n" + json.dumps({"type": "page"}) + "\n", encoding="utf-8")
    assert main(["run", PRESET, "--events", str(events), "--dry-run", "--progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "signal-engine: 1 event(s), " + err[0].split(", ", 1)[1]
    assert err[0].endswith(": 1 would_send") and err[1].endswith(": 1 would_send, 1 dropped (1 event_not_mapped)")
    assert err[2].startswith("signal-engine: 2 event(s) in ")
    assert main(["run", PRESET, "--events", str(events), "--dry-run", "--no-progress"]) == 0
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_dry_run_ends_with_its_summary_in_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "run", PRESET, "--events", "-", "--dry-run"],
        input=json.dumps(LEAD) + "\n{bad\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0
    assert proc.stderr.startswith("signal-engine: 2 event(s) in ")
    assert proc.stderr.endswith(": 1 would_send, 1 dropped (1 invalid_event)\n")


# --- logs -------------------------------------------------------------------------------------


def _record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    return logging.LogRecord(
        "engine.delivery.sender", logging.WARNING, __file__, 1, message, args, (type(exc), exc, None) if exc else None
    )


def test_json_logs_are_one_object_per_line_without_secrets() -> None:
    formatter = JsonFormatter(Redactor(["s3cret-refresh-token"]))
    line = formatter.format(
        _record(
            "attempt %d failed with token %s",
            2,
            "s3cret-refresh-token",
            exc=ValueError("bad s3cret-refresh-token\nsecond line"),
        )
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message", "exception"}
    assert entry["level"] == "warning" and entry["logger"] == "engine.delivery.sender"
    assert entry["message"] == "attempt 2 failed with token ***"
    assert entry["exception"] == "ValueError: bad ***"
    assert entry["time"].endswith("Z")


def test_configure_logging_json_writes_json_lines_for_the_engine_loggers(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger("engine")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        configure_logging(Redactor(["token-123456"]), verbose=True, log_format="json")
        logging.getLogger("engine.delivery.auth").info("minted token-123456")
        logging.getLogger("engine.runtime").warning("could not save")
        lines = capsys.readouterr().err.splitlines()
        assert [json.loads(line)["message"] for line in lines] == ["minted ***", "could not save"]
        assert [json.loads(line)["logger"] for line in lines] == ["engine.delivery.auth", "engine.runtime"]
    finally:
        root.handlers[:], root.level, root.propagate = saved


def test_log_format_json_makes_the_summary_and_hints_json_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.json"
    events.write_text(json.dumps([LEAD, LEAD]) + "\n" + json.dumps(LEAD) + "\n", encoding="utf-8")
    assert main(["run", PRESET, "--events", str(events), "--dry-run", "--log-format", "json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["event"]) for e in entries] == [("warning", "hint"), ("info", "summary")]
    assert entries[0]["message"].startswith(f"hint: --events {events}: it holds a JSON array")
    assert entries[1]["outcomes"] == {"dropped": 1, "would_send": 1}
    assert entries[1]["details"] == {"dropped": {"invalid_event": 1}}
    assert entries[1]["message"].startswith("2 event(s) in ")


@pytest.mark.parametrize(
    "code",
    [
        # A host that imported logging first: `import engine` adds the handler.
        "import logging, engine\n"
        "assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger('engine').handlers)\n"
        "logging.getLogger('engine.runtime').warning('this must not be printed')\n",
        # A host that did not: the first module with a logger adds it, before it can log.
        "import engine, engine.runtime, engine.service.worker, engine.state.record\n"
        "import logging\n"
        "assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger('engine').handlers)\n"
        "engine.runtime.log.warning('this must not be printed')\n"
        "engine.state.record.log.error('nor this')\n",
        # The identity memory, on a dry run's path, makes its logger where it logs.
        "import engine.pipeline.identity as identity, sys\n"
        "assert 'logging' not in sys.modules\n"
        "memory = identity.IdentityMemory.__new__(identity.IdentityMemory)\n"
        "memory.max_trait_bytes = 4\n"
        "assert memory._small('name', 'a longer value') is False\n"
        "assert 'logging' in sys.modules\n",
    ],
    ids=["logging-first", "engine-first", "logged-on-demand"],
)
def test_the_library_loggers_are_silent_without_a_host_configuration(tmp_path: Path, code: str) -> None:
    """A NullHandler on 'engine': no 'No handlers could be found', no last-resort printing of warnings."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_logger_names_follow_the_import_package() -> None:
    import engine.delivery.auth.oauth2
    import engine.delivery.sender
    import engine.runtime

    assert engine.delivery.auth.oauth2.log.name == "engine.delivery.auth.oauth2"
    assert engine.delivery.sender.log.name == "engine.delivery.sender"
    assert engine.runtime.log.name == "engine.runtime"
