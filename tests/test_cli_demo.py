"""``signal-engine demo``, through the installed command, as a new user runs it.

What the demo must show is read from the product page (the functional spec)
and the example events, never from the command's own output:

- "Event Mapping": only Lead Submitted, Form Submitted, Signed Up and Demo
  Requested create prospects; every other event is dropped
  (``defaults.action: drop``), identify included (its traits are remembered);
- "Signal only forwards events from consenting, identified users": the
  marketing category must be granted, and an email trait must be known;
- "Identity Signals": the email is trimmed and lower-cased, and "Outreach
  dedupes prospects on email", so a lead who comes back with the same email
  in other letters is merged into the prospect already held, not duplicated.

Each command runs from a folder outside the repository, so the events it
delivers are the ones shipped inside the package.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "lead-capture.ndjson"
SHIPPED = REPO / "engine" / "examples" / "demo-events.ndjson"
SIGNAL_ENGINE = Path(sys.executable).with_name("signal-engine")  # the console script of this environment

# Each event of the demo's set and what the product page says must become of it.
EXPECTED = {
    "msg-001": ("dropped", "event_not_mapped"),  # page views are not sent
    "msg-002": ("dropped", "event_not_mapped"),
    "msg-003": ("dropped", "event_not_mapped"),
    "msg-004": ("dropped", "event_not_mapped"),  # identify: remembered, not sent
    "msg-005": ("delivered", None),  # Demo Requested, email remembered from msg-004
    "msg-006": ("dropped", "event_not_mapped"),
    "msg-007": ("delivered", None),  # Lead Submitted
    "msg-008": ("dropped", "event_not_mapped"),  # identify
    "msg-009": ("delivered", None),  # Form Submitted, email remembered from msg-008
    "msg-010": ("delivered", None),  # Signed Up; traits in context.traits, flat consent
    "msg-011": ("dropped", "event_not_mapped"),  # e-commerce funnel: not sent
    "msg-012": ("dropped", "event_not_mapped"),
    "msg-013": ("delivered", None),  # Lead Submitted; consent as categories: [.., marketing]
    "msg-014": ("dropped", "no_consent"),  # marketing: false
    "msg-015": ("dropped", "not_identified"),  # no email anywhere
    "msg-016": ("dropped", "invalid_email"),  # kofi.mensah@stark has no domain
    "msg-017": ("dropped", "event_not_mapped"),  # group
    "msg-018": ("dropped", "event_not_mapped"),  # Report Exported is not in the event table
    "msg-019": ("dropped", "event_not_mapped"),
    "msg-020": ("delivered", None),  # msg-005's lead again: merged, not a second prospect
}
REPEATED = ("msg-005", "msg-020")  # the same lead, created then merged


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _demo(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SIGNAL_ENGINE), "demo", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _secrets(state: Path) -> list[str]:
    """The sandbox's client secret and every refresh and access token the run held, from the state it kept."""
    settings = dict(re.findall(r'^(\w+): "([^"]*)"$', (state / "demo-settings.yaml").read_text(), re.M))
    found = [settings["client_secret"], settings["refresh_token"]]
    with sqlite3.connect(state / "state.db") as db:
        for refresh, access in db.execute("SELECT refresh_token, access_token FROM tokens"):
            found += [refresh, access]
    assert all(found) and len(found) >= 4, found
    return found


def test_the_shipped_events_are_the_examples_and_one_lead_again() -> None:
    examples, shipped = _lines(EXAMPLES), _lines(SHIPPED)
    assert shipped[: len(examples)] == examples  # a change to the examples must be made to the shipped copy too
    assert [json.loads(line)["messageId"] for line in shipped] == list(EXPECTED)
    first, again = (next(json.loads(line) for line in shipped if json.loads(line)["messageId"] == m) for m in REPEATED)
    remembered = next(
        json.loads(line)["traits"]["email"]
        for line in examples
        if json.loads(line)["type"] == "identify" and json.loads(line)["userId"] == first["userId"]
    )
    # The same email in other letters and with spaces: it is one lead only once trimmed and lower-cased.
    assert again["traits"]["email"] != remembered
    assert again["traits"]["email"].strip().lower() == remembered


def test_demo_delivers_the_shipped_events_for_real_outside_the_repository(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _demo("--state", str(state), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    outcomes = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(outcomes) == len(_lines(SHIPPED))  # one outcome line per event
    assert {o["messageId"]: (o["outcome"], o.get("reason")) for o in outcomes} == EXPECTED
    assert [o["index"] for o in outcomes] == list(range(len(outcomes)))

    delivered = sum(1 for outcome, _ in EXPECTED.values() if outcome == "delivered")
    dropped: dict[str, int] = {}
    for outcome, reason in EXPECTED.values():
        if outcome == "dropped":
            dropped[str(reason)] = dropped.get(str(reason), 0) + 1
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(dropped.items(), key=lambda item: (-item[1], item[0])))
    assert (
        f": {delivered} delivered, {sum(dropped.values())} dropped ({reasons}); 1 access token(s) minted" in proc.stderr
    )

    # Every delivery went to the sandbox with a bearer token that was minted (and masked).
    by_id = {o["messageId"]: o for o in outcomes}
    for message_id, (outcome, _) in EXPECTED.items():
        if outcome == "delivered":
            request = by_id[message_id]["request"]
            assert request["url"].startswith("http://127.0.0.1:")
            assert request["headers"]["Authorization"] == "Bearer ***"
    first, again = (by_id[m] for m in REPEATED)
    assert first["request"]["method"] == "POST" and first["response"]["status"] == 201
    prospect_id = first["response"]["body"]["data"]["id"]
    # The repeat is merged into the prospect the first one created: its tags are kept, the new one added.
    assert again["request"]["method"] == "PATCH" and again["response"]["status"] == 200
    assert again["request"]["url"].endswith(f"/api/v2/prospects/{prospect_id}")
    assert again["response"]["body"]["data"]["attributes"]["tags"] == ["Signal", "demo-request", "lead"]

    for secret in _secrets(state):
        assert secret not in proc.stdout and secret not in proc.stderr
    assert os.stat(state / "demo-settings.yaml").st_mode & 0o077 == 0


def _read_lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)
    into.put("")


def test_keep_serving_leaves_each_lead_once_in_the_sandbox_until_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(SIGNAL_ENGINE), "demo", "--keep-serving", "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True).start()
        said: list[str] = []
        while not any("serving until Ctrl-C" in line for line in said):
            line = lines.get(timeout=60)
            assert line, f"the demo ended before serving: {said}"
            said.append(line)
        text = "".join(said)
        url = re.search(r"demo: sandbox state: (http://127\.0\.0\.1:\d+/_sandbox/state)$", text, re.M)
        assert url, text
        temporary = re.search(r"\(state and settings: (.+)\)$", text, re.M)
        assert temporary and Path(temporary[1]).is_dir(), text
        with urllib.request.urlopen(url[1], timeout=10) as answer:
            held = json.load(answer)["prospects"]

        # One prospect per lead email: each delivered event's email once, the repeated lead's included.
        emails = [p["attributes"]["emails"] for p in held]
        assert all(len(e) == 1 for e in emails)
        leads = {
            "jane.doe@acme.com",
            "marcus.lee@northwind.io",
            "priya.shah@globex.com",
            "tomas.novak@initech.cz",
            "amara.okafor@umbrella.ng",
        }  # msg-005/020, 007, 009, 010, 013, trimmed and lower-cased
        assert sorted(e[0] for e in emails) == sorted(leads)
        jane = next(p["attributes"] for p in held if p["attributes"]["emails"] == ["jane.doe@acme.com"])
        assert jane["tags"] == ["Signal", "demo-request", "lead"]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0  # Ctrl-C is how a kept-serving demo is meant to end
        assert proc.stdout is not None and proc.stdout.read() == ""  # --quiet: no outcome lines
        assert not Path(temporary[1]).exists()  # the temporary state (a rotated refresh token) is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_given_events_one_outcome_each_and_json_logs(tmp_path: Path) -> None:
    events = tmp_path / "mine.ndjson"
    lead = json.loads(_lines(EXAMPLES)[6])  # msg-007: a consenting Lead Submitted with an email
    events.write_text(json.dumps(lead) + "\n\n[1, 2]\n" + _lines(EXAMPLES)[0] + "\n", encoding="utf-8")
    proc = _demo("--events", str(events), "--log-format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    outcomes = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(o["outcome"], o.get("reason")) for o in outcomes] == [
        ("delivered", None),
        ("dropped", "invalid_event"),
        ("dropped", "event_not_mapped"),
    ]
    logged = [json.loads(line) for line in proc.stderr.splitlines()]  # every stderr line is JSON
    summary = next(entry for entry in logged if entry.get("event") == "summary")
    assert summary["outcomes"] == {"delivered": 1, "dropped": 2}
    sandbox = next(entry for entry in logged if entry.get("event") == "demo_sandbox")
    assert (sandbox["prospects"], sandbox["created"], sandbox["merged"]) == (1, 1, 0)


def test_a_missing_events_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.ndjson"
    proc = _demo("--events", str(missing), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"signal-engine: --events {missing}: cannot open: No such file or directory"]


def test_a_reused_state_says_the_journal_answered(tmp_path: Path) -> None:
    """A second demo on the same --state sends nothing again (the journal), and says so rather than look broken."""
    state = tmp_path / "state"
    assert _demo("--state", str(state), "--quiet", cwd=tmp_path).returncode == 0
    proc = _demo("--state", str(state), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    delivered = sum(1 for outcome, _ in EXPECTED.values() if outcome == "delivered")
    assert f"demo: {delivered} event(s) were not sent again: the delivery journal in {state}" in proc.stderr


def test_demo_help(tmp_path: Path) -> None:
    proc = _demo("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for option in ("--state", "--events", "--keep-serving", "--log-format", "--quiet"):
        assert option in proc.stdout
