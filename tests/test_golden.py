"""Golden cases: every case under golden/ must produce exactly its expected outcomes.

Each ``<name>.expected.json`` is a contract written from the product page
(the seed spec), not a snapshot: a mismatch means the engine or the preset
changed behaviour, and the diff shows how. Comparison is on the rendered
JSON, so the order of keys (e.g. attribute order in the prospect document)
is part of the contract too.

Delivery cases (with scripted ``responses``) pin every request and outcome;
what their masks hide (which refresh and access token went out) and what
their contract leaves out (how long the engine waited) is checked here on the
requests as sent and on the case's clock.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine import outcome as oc
from engine.compile.compiler import load_preset
from engine.delivery.response_rules import Answer, matches
from engine.golden import (
    EXPECTED_SUFFIX,
    GoldenCase,
    ScriptedRun,
    deliver_scripted,
    discover,
    render,
    run_case,
)
from engine.language import expressions
from engine.language.settings import resolve

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
OUTREACH = "outreach/lead-capture"
CASES = discover(GOLDEN) if GOLDEN.is_dir() else []

# "Event Mapping" table of the product page, Lead Capture preset: Signal event -> tag applied.
EVENT_MAPPING = {
    "Lead Submitted": "lead",
    "Form Submitted": "form",
    "Signed Up": "signup",
    "Demo Requested": "demo-request",
}


UNTAGGED = object()


def _tags(preset: str, body: dict, settings: dict) -> object:
    """Where each built-in preset puts the table's tags ("Signal" plus the event's tag), as a list."""
    if preset == "outreach/lead-capture":
        return body["data"]["attributes"].get("tags")
    if preset == "salesloft/people":
        return body.get("tags")
    if preset == "hubspot/contacts":  # a multiple-checkbox property named by the user, ';'-separated
        value = body["properties"].get(settings.get("tags_property", ""))
        return value.split(";") if isinstance(value, str) else None
    if preset == "hubspot/contacts-batch":  # the same property, in the batch input's properties
        value = body["inputs"][0]["properties"].get(settings.get("tags_property", ""))
        return value.split(";") if isinstance(value, str) else None
    if preset == "close/leads":  # a multiple-choice contact custom field named by the user
        return body["contacts"][0].get(f"custom.{settings.get('tags_field_id', '')}")
    if preset in UNTAGGED:
        return None
    raise AssertionError(f"tests/test_golden.py does not know where {preset} puts its tags")


# Presets whose destination has nowhere for the table's tags: a row is pinned by its event being sent.
UNTAGGED = {"salesforce/leads", "meta/conversions"}


@pytest.fixture(scope="module")
def presets() -> dict:
    """Loaded presets, one set per JSONata engine."""
    return {backend: {} for backend in expressions.BACKENDS}


@pytest.mark.parametrize("backend", expressions.BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case(case: GoldenCase, backend: str, presets: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case, on both JSONata engines: the fast default and the reference."""
    monkeypatch.setenv(expressions.BACKEND_ENV, backend)
    result = run_case(case, presets[backend])
    assert result.expected is not None, f"{case.expected_path} is missing"
    if render(result.expected) != render(result.actual):
        pytest.fail(f"golden mismatch for {case.name}:\n{result.diff()}", pytrace=False)


def test_golden_cases_exist() -> None:
    assert CASES, f"no golden cases under {GOLDEN}"


def _dry_run_cases(preset: str = OUTREACH) -> list[GoldenCase]:
    """A preset's cases whose contract is a dry run (a list of outcomes); the Outreach ones by default.

    Delivery cases (``responses``, an ``{exchanges, outcomes}`` contract) are
    not what the product page's tables speak of.
    """
    cases = [
        case
        for case in CASES
        if case.preset_name == preset
        and case.expected_path.exists()
        and isinstance(json.loads(case.expected_path.read_text(encoding="utf-8")), list)
    ]
    assert cases, f"no dry-run golden cases for {preset}"
    return cases


def _expected_outcomes() -> list[tuple[GoldenCase, dict]]:
    pairs = []
    for case in _dry_run_cases():
        for item in json.loads(case.expected_path.read_text(encoding="utf-8")):
            pairs.append((case, item))
    return pairs


def test_every_drop_reason_is_pinned() -> None:
    seen = {item.get("reason") for _, item in _expected_outcomes() if item.get("outcome") == oc.DROPPED}
    missing = [reason for reason in oc.DROP_REASONS if reason not in seen]
    assert not missing, f"no golden case pins drop reason(s): {', '.join(missing)}"


@pytest.mark.parametrize("preset", sorted({c.preset_name for c in CASES}))
def test_every_event_mapping_row_is_pinned(preset: str) -> None:
    """One dry-run case per row of the Event Mapping table: the track event sent, tagged as the table says."""
    covered = set()
    for case in _dry_run_cases(preset):
        spec = json.loads(case.path.read_text(encoding="utf-8"))
        expected = json.loads(case.expected_path.read_text(encoding="utf-8"))
        by_index = {item.get("index"): item for item in expected}
        for index, event in enumerate(spec.get("events", [])):
            if not isinstance(event, dict) or event.get("type") != "track":
                continue
            if not isinstance(event.get("event"), str) or event["event"] not in EVENT_MAPPING:
                continue
            item = by_index.get(index, {})
            if item.get("outcome") != oc.WOULD_SEND:
                continue
            if preset in UNTAGGED or _tags(preset, item["request"]["body"], spec.get("settings") or {}) == [
                "Signal",
                EVENT_MAPPING[event["event"]],
            ]:
                covered.add(event["event"])
    missing = [name for name in EVENT_MAPPING if name not in covered]
    assert not missing, f"no {preset} golden case sends (with its table tag) the mapped event(s): {', '.join(missing)}"


# -- delivery cases ---------------------------------------------------------------------


def _delivery_cases(preset: str | None = None) -> list[tuple[GoldenCase, dict]]:
    """Cases with scripted ``responses``, with their parsed case file."""
    found = []
    for case in CASES:
        if preset is not None and case.preset_name != preset:
            continue
        spec = json.loads(case.path.read_text(encoding="utf-8"))
        if isinstance(spec, dict) and "responses" in spec:
            found.append((case, spec))
    return found


def _scripted(case: GoldenCase, spec: dict, presets: dict) -> ScriptedRun:
    """Deliver a case again to see the wire (credentials included), which the expected file masks."""
    if case.preset_name not in presets:
        presets[case.preset_name] = load_preset(case.preset_name)
    preset = presets[case.preset_name]
    settings = resolve(preset.settings, spec.get("settings") or {}, require=True)
    run = asyncio.run(deliver_scripted(preset, settings, spec["events"], spec["responses"], source=case.path))
    assert run.problem is None, run.problem
    return run


def _secret_values(case_spec: dict, presets: dict, preset_name: str) -> set[str]:
    """The case's secret settings, and every token its scripted answers hand out."""
    if preset_name not in presets:
        presets[preset_name] = load_preset(preset_name)
    secret_names = {name for name, setting in presets[preset_name].settings.items() if setting.secret}
    values = {str(v) for k, v in (case_spec.get("settings") or {}).items() if k in secret_names and v}
    for response in case_spec["responses"]:
        body = response.get("body")
        if isinstance(body, dict):
            values |= {body[k] for k in ("access_token", "refresh_token") if isinstance(body.get(k), str) and body[k]}
    return values


def test_no_secret_of_a_case_appears_in_any_expected_file(presets: dict) -> None:
    """Client secret, refresh tokens and access tokens never reach a golden file (docs/concepts/outcomes.md: secrets never appear)."""
    secrets: dict[str, GoldenCase] = {}
    for case, spec in _delivery_cases():
        for value in _secret_values(spec, presets, case.preset_name):
            secrets[value] = case
    assert secrets, "no delivery case declares a secret setting"
    expected_files = sorted(GOLDEN.rglob("*" + EXPECTED_SUFFIX))
    leaks = [
        f"{path.relative_to(GOLDEN)} shows a secret of {case.name}"
        for path in expected_files
        for value, case in secrets.items()
        if value in path.read_text(encoding="utf-8")
    ]
    assert not leaks, "\n".join(leaks)


def test_outreach_token_chain_on_the_wire(presets: dict) -> None:
    """Refresh tokens rotate: each mint sends the latest refresh token, each API request the latest access token.

    Outreach API facts: every refresh returns a new refresh token and
    invalidates the old one; the token request carries grant_type=refresh_token,
    refresh_token, client_id and client_secret. The expected files mask all of
    them, so the chain is checked on the requests as sent.
    """
    rotated_mints = 0
    for case, spec in _delivery_cases(OUTREACH):
        run = _scripted(case, spec, presets)
        settings = spec["settings"]
        refresh, access = settings["refresh_token"], None
        for request, answer in zip(run.sent, spec["responses"], strict=True):
            where = f"{case.name}: {request.method} {request.url}"
            if request.form is not None:
                assert request.form == {
                    "grant_type": "refresh_token",
                    "refresh_token": refresh,
                    "client_id": settings["client_id"],
                    "client_secret": settings["client_secret"],
                }, where
                rotated_mints += refresh != settings["refresh_token"]
                body = answer.get("body")
                if isinstance(body, dict) and isinstance(body.get("access_token"), str):
                    access = body["access_token"]
                    refresh = body.get("refresh_token") or refresh
            else:
                assert access is not None, f"{where}: sent before any access token was minted"
                assert request.headers.get("Authorization") == f"Bearer {access}", where
    assert rotated_mints, "no delivery case mints a second time with a rotated refresh token"


# Waits are not part of the {exchanges, outcomes} contract: the case's clock pins them.
WAITS = {
    "delivery-429-waits-then-delivered": 30.0,  # Retry-After: 30
    "delivery-token-429-waits-then-mints": 60.0,  # Retry-After: 60 at the token endpoint
    "delivery-rate-limit-headers-spent-window": 3600.0,  # Remaining "0, …" until Reset (at most the hour)
}


@pytest.mark.parametrize("name", sorted(WAITS))
def test_outreach_rate_limit_waits(name: str, presets: dict) -> None:
    [(case, spec)] = [(c, s) for c, s in _delivery_cases(OUTREACH) if c.path.stem == name]
    run = _scripted(case, spec, presets)
    assert sum(run.sleeps) >= WAITS[name], f"{name} waited {sum(run.sleeps):.3f}s, expected at least {WAITS[name]}s"


def test_without_a_wait_asked_nothing_waits(presets: dict) -> None:
    [(case, spec)] = [
        (c, s) for c, s in _delivery_cases(OUTREACH) if c.path.stem == "delivery-token-minted-once-for-two-events"
    ]
    assert _scripted(case, spec, presets).sleeps == []


def test_every_outreach_response_and_auth_rule_is_pinned(presets: dict) -> None:
    """Each row of delivery.responses and auth.errors answers at least one request of a delivery case."""
    preset = presets.setdefault(OUTREACH, load_preset(OUTREACH))
    assert preset.auth is not None
    hit_delivery: set[int] = set()
    hit_auth: set[int] = set()
    upserted = False
    steps = {"POST": "create", "GET": "lookup", "PATCH": "update"}
    for case, spec in _delivery_cases(OUTREACH):
        run = _scripted(case, spec, presets)
        for request, answer in zip(run.sent, spec["responses"], strict=True):
            token = request.form is not None
            if "error" in answer:
                reply = Answer(None, transport_error=answer["error"], step=None if token else steps[request.method])
            else:
                reply = Answer.from_body(
                    answer["status"],
                    answer.get("body"),
                    answer.get("headers"),
                    None if token else steps[request.method],
                )
            rules = preset.auth.rules if token else preset.delivery.rules
            for i, rule in enumerate(rules):
                if matches(rule, reply):
                    (hit_auth if token else hit_delivery).add(i)
                    break
        upserted |= any(o.get("outcome") == oc.DELIVERED and o["request"]["method"] == "PATCH" for o in run.outcomes)
    missing = [f"delivery.responses[{i}]" for i in range(len(preset.delivery.rules)) if i not in hit_delivery]
    missing += [f"auth.errors[{i}]" for i in range(len(preset.auth.rules)) if i not in hit_auth]
    assert not missing, f"no delivery case exercises {', '.join(missing)}"
    assert upserted, "no delivery case delivers through the upsert (PATCH)"


# The vendor presets' waits, from their documented rate-limit signals (docs/vendors/).
VENDOR_WAITS = {
    ("hubspot/contacts", "delivery-rate-limited"): 10.0,  # X-HubSpot-RateLimit-Interval-Milliseconds: 10000
    ("close/leads", "delivery-rate-limited"): 2.5,  # 429 body error.rate_reset: 2.5
}


@pytest.mark.parametrize("preset, name", sorted(VENDOR_WAITS))
def test_vendor_rate_limit_waits(preset: str, name: str, presets: dict) -> None:
    [(case, spec)] = [(c, s) for c, s in _delivery_cases(preset) if c.path.stem == name]
    waited = sum(_scripted(case, spec, presets).sleeps)
    assert waited >= VENDOR_WAITS[(preset, name)], f"{case.name} waited {waited:.3f}s"
