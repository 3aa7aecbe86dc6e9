"""The shipped example stream, run through the CLI exactly as the README and docs/getting-started.md show it.

``examples/lead-capture.ndjson`` is a small, realistic stream: anonymous
browsing, the product page's "Example: Demo Requested" (identify, then
track), each of the four lead events, the e-commerce funnel, and the cases
that must be dropped. The expected prospect document below is typed out from
the product page ("Outreach payload sent by Signal"), not copied from output.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from engine.cli import common as cli_common
from engine.cli import main
from engine.cli import run as cli_run
from fakes import SEED_DEMO_REQUESTED_PAYLOAD

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lead-capture.ndjson"

# docs/architecture.md, "Public contracts": drop reason codes are part of the public contract.
DROP_REASONS = {"event_not_mapped", "no_consent", "not_identified", "invalid_email", "invalid_event"}


# "Event Mapping" table: Signal event -> tag applied (besides "Signal").
LEAD_EVENT_TAGS = {
    "Lead Submitted": "lead",
    "Form Submitted": "form",
    "Signed Up": "signup",
    "Demo Requested": "demo-request",
}

ECOMMERCE_EVENTS = {"Product Viewed", "Product Added", "Checkout Started", "Order Completed"}


def _input_events() -> list[dict]:
    lines = [line for line in EXAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return _input_events()


@pytest.fixture
def outcomes(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    # cli.emit's default stream is bound to the sys.stdout of import time, which
    # capsys cannot see; route default-stream writes to the current sys.stdout.
    original_emit = cli_common.emit
    monkeypatch.setattr(
        cli_run,
        "emit",
        lambda outcome, out=None, **options: original_emit(outcome, sys.stdout if out is None else out, **options),
    )
    code = main(["run", "outreach/lead-capture", "--events", str(EXAMPLE), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # stderr holds only the run's summary line (docs/concepts/outcomes.md).
    assert re.fullmatch(
        r"signal-engine: 19 event\(s\) in [0-9.]+s: 5 would_send, 14 dropped \(11 event_not_mapped, "
        r"1 invalid_email, 1 no_consent, 1 not_identified\)\n",
        captured.err,
    ), captured.err
    return [json.loads(line) for line in captured.out.splitlines()]


def _by_id(outcomes: list[dict]) -> dict[str, dict]:
    return {o["messageId"]: o for o in outcomes}


def _consent(event: dict) -> dict | None:
    return (event.get("context") or {}).get("consent")


def test_example_is_a_realistic_stream(events: list[dict]) -> None:
    assert 15 <= len(events) <= 25
    ids = [e["messageId"] for e in events]
    assert len(set(ids)) == len(ids)
    for event in events:
        assert event["timestamp"]
        assert event.get("userId") or event.get("anonymousId")
        context = event["context"]
        assert context["page"]["url"] and context["userAgent"]
    shapes = [_consent(e) for e in events]
    assert any(c and c.get("canonical", {}).get("marketing") is True for c in shapes)
    assert any(c and c.get("marketing") is True and "canonical" not in c for c in shapes)
    assert any(c and "marketing" in c.get("categories", []) for c in shapes)


def test_one_outcome_per_event_in_order(events: list[dict], outcomes: list[dict]) -> None:
    assert len(outcomes) == len(events)
    assert [o["messageId"] for o in outcomes] == [e["messageId"] for e in events]
    for outcome in outcomes:
        assert outcome["outcome"] in ("dropped", "would_send")


def test_seed_demo_request_produces_the_seed_payload(events: list[dict], outcomes: list[dict]) -> None:
    identify = next(e for e in events if e["type"] == "identify" and e.get("userId") == "user-123")
    # Exactly the product page's identify() call: no city or country.
    assert identify["traits"] == {
        "email": "jane.doe@acme.com",
        "firstName": "Jane",
        "lastName": "Doe",
        "company": "Acme Inc",
        "title": "Head of Growth",
        "phone": "+44 7700 900123",
    }
    demo = next(
        e
        for e in events
        if e["type"] == "track" and e.get("event") == "Demo Requested" and e.get("userId") == "user-123"
    )
    assert not demo.get("traits") and not demo["context"].get("traits")

    outcome = _by_id(outcomes)[demo["messageId"]]
    assert outcome["outcome"] == "would_send"
    request = outcome["request"]
    assert request["method"] == "POST"
    assert request["url"] == "https://api.outreach.io/api/v2/prospects"
    assert request["headers"]["Content-Type"] == "application/vnd.api+json"
    assert request["body"] == SEED_DEMO_REQUESTED_PAYLOAD
    # Same attributes in the same order as the product page shows them.
    assert list(request["body"]["data"]["attributes"]) == list(SEED_DEMO_REQUESTED_PAYLOAD["data"]["attributes"])


def test_every_drop_has_a_contract_reason(outcomes: list[dict]) -> None:
    drops = [o for o in outcomes if o["outcome"] == "dropped"]
    assert drops
    for outcome in drops:
        assert outcome["reason"] in DROP_REASONS, outcome
        assert outcome["detail"]
        assert "request" not in outcome


def test_expected_drop_reasons(events: list[dict], outcomes: list[dict]) -> None:
    by_id = _by_id(outcomes)
    pages = [e for e in events if e["type"] == "page"]
    assert pages and all(not e.get("userId") for e in pages[:3])
    for event in pages:
        assert by_id[event["messageId"]]["reason"] == "event_not_mapped"

    ecommerce = [e for e in events if e.get("event") in ECOMMERCE_EVENTS]
    assert {e["event"] for e in ecommerce} >= {"Product Added", "Order Completed"}
    for event in ecommerce:
        assert by_id[event["messageId"]]["reason"] == "event_not_mapped"

    no_consent = [
        e
        for e in events
        if e.get("event") in LEAD_EVENT_TAGS and (_consent(e) or {}).get("canonical", {}).get("marketing") is False
    ]
    assert len(no_consent) == 1
    assert by_id[no_consent[0]["messageId"]]["outcome"] == "dropped"
    assert by_id[no_consent[0]["messageId"]]["reason"] == "no_consent"

    no_email = [
        e
        for e in events
        if e.get("event") in LEAD_EVENT_TAGS and not e.get("userId") and "email" not in (e.get("traits") or {})
    ]
    assert len(no_email) == 1
    assert by_id[no_email[0]["messageId"]]["reason"] == "not_identified"

    bad_email = [e for e in events if (e.get("traits") or {}).get("email") == "kofi.mensah@stark"]
    assert len(bad_email) == 1
    assert by_id[bad_email[0]["messageId"]]["reason"] == "invalid_email"


def test_each_lead_event_creates_a_prospect_with_its_tag(events: list[dict], outcomes: list[dict]) -> None:
    by_id = _by_id(outcomes)
    sent = {}
    for event in events:
        outcome = by_id[event["messageId"]]
        if outcome["outcome"] == "would_send":
            assert event["type"] == "track" and event["event"] in LEAD_EVENT_TAGS
            attributes = outcome["request"]["body"]["data"]["attributes"]
            assert attributes["tags"] == ["Signal", LEAD_EVENT_TAGS[event["event"]]]
            sent.setdefault(event["event"], set()).update(attributes["emails"])
    assert set(sent) == set(LEAD_EVENT_TAGS)
    people = [email for emails in sent.values() for email in emails]
    assert len(people) == len(set(people)), "each lead event should be a different person"


def test_all_three_consent_shapes_grant_marketing(events: list[dict], outcomes: list[dict]) -> None:
    by_id = _by_id(outcomes)
    flat = next(e for e in events if (_consent(e) or {}).get("marketing") is True and e.get("event") in LEAD_EVENT_TAGS)
    codes = next(e for e in events if "categories" in (_consent(e) or {}))
    assert by_id[flat["messageId"]]["outcome"] == "would_send"
    assert by_id[codes["messageId"]]["outcome"] == "would_send"


def test_emails_are_trimmed_and_lower_cased_and_phones_e164(outcomes: list[dict]) -> None:
    bodies = [o["request"]["body"]["data"]["attributes"] for o in outcomes if o["outcome"] == "would_send"]
    marcus = next(a for a in bodies if a.get("firstName") == "Marcus")
    assert marcus["emails"] == ["marcus.lee@northwind.io"]
    assert marcus["mobilePhones"] == ["+442079460958"]  # national number, region from the country trait
    assert marcus["addressCity"] == "London" and marcus["addressCountry"] == "GB"
