"""``signal-engine explain``: every decision for one event, and never a different outcome from a run."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.compile.compiler import load_preset
from engine.golden import discover
from engine.language.settings import resolve
from engine.pipeline.explain import explain, outline
from engine.pipeline.prepare import Pipeline

REPO = Path(__file__).resolve().parents[1]
BUILTIN = REPO / "presets" / "outreach" / "lead-capture.yaml"
EXAMPLE = REPO / "examples" / "lead-capture.ndjson"
PRESET = "outreach/lead-capture"
CASES = [
    c for c in discover(REPO / "golden") if isinstance(json.loads(c.expected_path.read_text(encoding="utf-8")), list)
]  # dry-run cases
GRANTED = {"consent": {"canonical": {"marketing": True}}}

# docs/concepts/outcomes.md: which stage decides each drop reason and failure cause.
DECIDED_BY = {
    "invalid_event": "shape",
    "event_not_mapped": "event_table",
    "no_consent": "consent",
    "not_identified": "traits",
    "invalid_email": "traits",
    "output_invalid": "output",
    "mapping_error": "mapping",
}


def explained(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> dict[str, Any]:
    assert (
        main(
            ["explain", PRESET, *args, "--json"]
            if not args or not args[0].endswith(".yaml")
            else ["explain", *args, "--json"]
        )
        == code
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object
    return json.loads(out)


def line_of(path: Path, needle: str) -> int:
    hits = [i + 1 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


# --- an explanation never disagrees with the run ------------------------------------------------


@functools.cache
def _preset(ref: str) -> Any:
    return load_preset(ref)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_golden_event_is_explained_with_its_contract_outcome(case: Any) -> None:
    spec = json.loads(case.path.read_text(encoding="utf-8"))
    expected = json.loads(case.expected_path.read_text(encoding="utf-8"))
    preset = _preset(case.preset_ref)
    settings = resolve(preset.settings, spec.get("settings") or {}, require=False)
    pipeline = Pipeline(preset, settings)
    for index, event in enumerate(spec["events"]):
        result = explain(pipeline, event, index)
        want = expected[index]
        assert result["outcome"] == want
        assert "trace_error" not in result["steps"]
        steps = result["steps"]
        why = want.get("reason") or want.get("cause")
        if want["outcome"] == "would_send":
            assert result["decided_by"] == "request"
            # The document the explanation built is the body the run sends; a batching
            # action's dry run sends it as the one item of a request of one. A flow that
            # starts with a query (GET) sends no document first.
            action = preset.actions[steps["event_table"]["action"]]
            document = steps["output"]["document"]
            if "body" in want["request"]:
                body = want["request"]["body"]
                if action.batch is None:
                    assert document == body
                else:
                    assert body == action.batch.body.evaluate({"items": [document], "settings": settings.public()})
            assert steps["request"] == want["request"]
            assert steps["consent"]["missing"] == [] and steps["output"]["validation"]["ok"]
        else:
            assert result["decided_by"] == DECIDED_BY[why]
            # The stage that decided is the last one the explanation shows.
            assert list(steps)[-1] == DECIDED_BY[why]
            if why == "no_consent":
                assert steps["consent"]["missing"]
            if why == "event_not_mapped":
                assert steps["event_table"]["matched"] is False


def test_explaining_does_not_change_what_the_run_decides() -> None:
    """Explaining every event of a stream, in order, gives the same outcomes as dry-running it."""
    preset = load_preset(PRESET)
    events = [json.loads(line) for line in EXAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    explaining = Pipeline(preset, resolve(preset.settings, {}, require=False))
    running = Pipeline(preset, resolve(preset.settings, {}, require=False))
    for index, event in enumerate(events):
        assert explain(explaining, event, index)["outcome"] == running.dry_run(event, index).to_dict()


# --- --index runs the events before it -----------------------------------------------------------


def test_index_runs_earlier_events_so_identify_memory_is_as_in_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    result = explained(capsys, "--event", str(EXAMPLE), "--index", "4")
    assert result["index"] == 4 and result["messageId"] == "msg-005"
    assert result["outcome"]["outcome"] == "would_send"
    traits = {row["name"]: row for row in result["steps"]["traits"]["traits"]}
    assert traits["email"]["source"] == "remembered (userId user-123)"
    assert traits["email"]["result"] == "jane.doe@acme.com"
    assert traits["phone"]["value"] == "+44 7700 900123" and traits["phone"]["result"] == "+447700900123"
    assert traits["city"]["source"] is None
    # The same line on its own: nothing remembered, so no email.
    alone = EXAMPLE.read_text(encoding="utf-8").splitlines()[4]
    result = explained(capsys, "--event", alone)
    assert result["outcome"]["reason"] == "not_identified"
    assert result["decided_by"] == "traits"


def test_a_file_of_several_events_needs_an_index(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", PRESET, "--event", str(EXAMPLE)]) == 2
    assert "holds 19 events; choose one with --index N (N is one of 0..18)" in capsys.readouterr().err
    assert main(["explain", PRESET, "--event", str(EXAMPLE), "--index", "19"]) == 2
    assert "--index 19: no event there" in capsys.readouterr().err


def test_index_counts_ndjson_lines_as_run_does_and_a_bad_line_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text("\n" + json.dumps({"type": "page"}) + "\n{oops\n", encoding="utf-8")
    result = explained(capsys, "--event", str(events), "--index", "2")
    assert result["outcome"] == {
        "index": 2,
        "messageId": None,
        "outcome": "dropped",
        "reason": "invalid_event",
        "detail": "line 3: not valid JSON: Expecting property name enclosed in double quotes at column 2",
    }
    assert result["steps"] == {"shape": {"ok": False, "problem": result["outcome"]["detail"]}}
    assert main(["explain", PRESET, "--event", str(events), "--index", "0"]) == 2  # a blank line
    capsys.readouterr()


def test_a_golden_case_file_and_a_json_array_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = REPO / "golden" / "outreach" / "lead-capture" / "join-identify-then-track-by-user-id.json"
    expected = json.loads(case.with_name(case.stem + ".expected.json").read_text(encoding="utf-8"))
    last = len(expected) - 1
    assert explained(capsys, "--event", str(case), "--index", str(last))["outcome"] == expected[last]
    array = tmp_path / "events.json"
    array.write_text(json.dumps(json.loads(case.read_text(encoding="utf-8"))["events"], indent=2), encoding="utf-8")
    assert explained(capsys, "--event", str(array), "--index", str(last))["outcome"] == expected[last]


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"type": "page", "messageId": "p"}, indent=2)))
    assert explained(capsys, "--event", "-")["outcome"]["reason"] == "event_not_mapped"


# --- what each stage says ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "consent, shape, granted, by",
    [
        (
            {"canonical": {"marketing": True}, "marketing": False},
            "canonical",
            True,
            "context.consent.canonical.marketing",
        ),
        ({"canonical": {"marketing": "true"}}, "canonical", False, "context.consent.canonical.marketing"),
        ({"marketing": True}, "flat", True, "context.consent.marketing"),
        ({"categories": ["Marketing"]}, "categories", True, "context.consent.categories"),
        ({"categories": ["C0004"]}, "categories", False, None),
        ({}, "none", False, None),
    ],
)
def test_the_consent_step_names_the_shape_and_key_that_decided(
    capsys: pytest.CaptureFixture[str], consent: dict, shape: str, granted: bool, by: str | None
) -> None:
    event = {"type": "track", "event": "Signed Up", "traits": {"email": "a@b.co"}, "context": {"consent": consent}}
    step = explained(capsys, "--event", json.dumps(event))["steps"]["consent"]
    assert step["shape"] == shape
    assert step["required"] == ["marketing"] and step["setting"] == "consent_categories"
    [row] = step["categories"]
    assert row["granted"] is granted
    assert row.get("by") == by
    assert step["missing"] == ([] if granted else ["marketing"])


def test_the_consent_alias_that_granted_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "aliased.yaml"
    text = BUILTIN.read_text(encoding="utf-8")
    preset.write_text(
        text.replace("  require: all\n", "  require: all\n  aliases:\n    marketing: [C0004]\n"), encoding="utf-8"
    )
    event = {
        "type": "track",
        "event": "Signed Up",
        "traits": {"email": "a@b.co"},
        "context": {"consent": {"categories": ["c0004"]}},
    }
    step = explained(capsys, str(preset), "--event", json.dumps(event))["steps"]["consent"]
    assert step["categories"][0]["granted"] is True
    assert "(consent.aliases maps it to marketing)" in step["categories"][0]["why"]


def test_traits_say_where_they_came_from_and_what_the_normaliser_did(capsys: pytest.CaptureFixture[str]) -> None:
    events = [
        {
            "type": "identify",
            "userId": "u-1",
            "anonymousId": "a-1",
            "traits": {"email": "old@acme.com", "company": "Remembered Co"},
        },
        {"type": "identify", "anonymousId": "a-2", "traits": {"title": "CTO"}},
        {
            "type": "track",
            "event": "Signed Up",
            "userId": "u-1",
            "anonymousId": "a-1",
            "traits": {"email": "  New@ACME.com ", "phone": "020 7946 0958", "lastName": "   ", "plan": "pro"},
            "context": {"traits": {"firstName": "Jane", "country": "GB", "email": "ctx@acme.com"}, **GRANTED},
        },
    ]
    result = explained(capsys, "--event", json.dumps(events), "--index", "2")
    assert result["outcome"]["outcome"] == "would_send"
    step = result["steps"]["traits"]
    rows = {row["name"]: row for row in step["traits"]}
    assert rows["email"]["source"] == "traits" and rows["email"]["result"] == "new@acme.com"
    assert rows["email"]["why"] == "email changed it" and rows["email"]["required"] is True
    assert [o["source"] for o in rows["email"]["overrides"]] == ["context.traits", "remembered (userId u-1)"]
    assert rows["firstName"]["source"] == "context.traits" and rows["firstName"]["why"] == "unchanged"
    assert rows["company"]["source"] == "remembered (userId u-1)"
    assert rows["phone"]["result"] == "+442079460958"
    assert rows["phone"]["region_from"] == {"trait": "country", "value": "GB"}
    assert rows["lastName"]["source"] is None and "blank values say nothing" in rows["lastName"]["why"]
    assert rows["title"]["source"] is None  # a-2's traits never reach u-1
    assert step["ignored"] == ["plan"]
    assert step["mapping_sees"]["email"] == "new@acme.com" and "plan" not in step["mapping_sees"]


def test_a_trait_remembered_under_the_anonymous_id_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    events = [
        {"type": "identify", "anonymousId": "a-9", "traits": {"email": "anon@acme.com"}},
        {"type": "track", "event": "Signed Up", "anonymousId": "a-9", "context": GRANTED},
    ]
    rows = explained(capsys, "--event", json.dumps(events), "--index", "1")["steps"]["traits"]["traits"]
    assert rows[0]["source"] == "remembered (anonymousId a-9)"


def test_an_invalid_required_trait_stops_at_the_traits(capsys: pytest.CaptureFixture[str]) -> None:
    event = {"type": "track", "event": "Signed Up", "traits": {"email": "not-an-address"}, "context": GRANTED}
    result = explained(capsys, "--event", json.dumps(event))
    assert result["outcome"]["reason"] == "invalid_email"
    email = result["steps"]["traits"]["traits"][0]
    assert email["invalid"] == "not an email address: 'not-an-address'"
    assert "mapping" not in result["steps"]


def test_identify_memory_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    event = {
        "type": "identify",
        "userId": "u-1",
        "traits": {"email": "a@b.co", "plan": "x"},
        "context": {"consent": {"canonical": {"marketing": False}}},
    }
    step = explained(capsys, "--event", json.dumps(event))["steps"]["identify"]
    assert step["remembered"] is False and step["refused"] == ["marketing"]
    assert "forgotten" in step["why"]
    event["context"] = GRANTED
    step = explained(capsys, "--event", json.dumps(event))["steps"]["identify"]
    assert step == {
        "remembered": True,
        "ids": {"userId": "u-1"},
        "traits": ["email"],
        "why": "remembered for later events of these ids (identity.remember)",
    }


def test_fields_name_the_expression_and_line_that_wrote_them(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    event = {
        "type": "track",
        "event": "Signed Up",
        "context": GRANTED,
        "traits": {"email": "a@b.co", "title": "T" * 300, "phone": "not a phone"},
    }
    result = explained(capsys, "--event", json.dumps(event))
    assert result["outcome"]["outcome"] == "would_send"
    fields = {f["path"]: f for f in result["steps"]["mapping"]["fields"]}
    name = fields["data.attributes.name"]
    assert name["expression"] == 'traits.name ? traits.name : $join([traits.firstName, traits.lastName], " ")'
    name_line = line_of(BUILTIN, '"name": traits.name ?')
    assert name["at"] == f"presets/outreach/lead-capture.yaml:{name_line}"
    assert fields["data.attributes.addressCity"]["written"] is False
    output = result["steps"]["output"]
    omitted = {o["path"]: o for o in output["omitted"]}
    assert set(omitted) == {"data.attributes.name", "data.attributes.mobilePhones"}
    assert omitted["data.attributes.mobilePhones"]["value"] == []
    phones_line = line_of(BUILTIN, '"mobilePhones": [traits.phone]')
    assert omitted["data.attributes.mobilePhones"]["at"].endswith(f":{phones_line}")
    truncated = {t["path"]: t for t in output["truncated"]}
    # The prospect schema's maxLength for title and occupation (shared/reference: Outreach's OpenAPI).
    assert truncated["data.attributes.title"]["from_length"] == 300
    assert truncated["data.attributes.title"]["to_length"] == 255
    assert truncated["data.attributes.occupation"]["expression"] == "traits.title"
    assert output["validation"] == {"ok": True}


def test_a_validation_failure_names_the_field_and_its_expression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "failing.yaml"
    preset.write_text(
        BUILTIN.read_text(encoding="utf-8").replace('"emails": [traits.email],', '"emails": traits.email,'),
        encoding="utf-8",
    )
    event = {"type": "track", "event": "Signed Up", "traits": {"email": "a@b.co"}, "context": GRANTED}
    result = explained(capsys, str(preset), "--event", json.dumps(event), code=1)
    assert result["outcome"]["cause"] == "output_invalid"
    assert result["decided_by"] == "output"
    validation = result["steps"]["output"]["validation"]
    assert validation["ok"] is False and validation["field"] == "/data/attributes/emails"
    assert validation["expression"] == "traits.email"
    emails_line = line_of(preset, '"emails": traits.email,')
    assert validation["at"] == f"{preset}:{emails_line}"
    assert "request" not in result["steps"]


def test_the_text_explanation_reads_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", PRESET, "--event", str(EXAMPLE), "--index", "4"]) == 0
    text = capsys.readouterr().out
    headings = [line for line in text.splitlines() if line[:1].isdigit()]
    assert [h.split(":")[0].split(" (")[0] for h in headings] == [
        "1. shape",
        "2. event table",
        "3. consent",
        "4. traits",
        "5. mapping",
        "6. output contract outreach/prospect-request",
        "7. request",
    ]
    assert text.splitlines()[0] == "outreach/lead-capture, event 4 (messageId msg-005): would_send, decided by: request"
    assert "Authorization: Bearer ***" in text


# --- the mapping outline -------------------------------------------------------------------------


def test_outline_follows_nested_constructors_and_skips_strings_and_comments() -> None:
    source = '/* c */ {"a": {"b": x.y, "c": $f("}", \'a,b\')}, "d": {"e": 1}.e, "f": [1, {"g": 2}]}'
    spans = {path: source[start:end] for path, (start, end) in outline(source).items()}
    assert spans == {("a", "b"): "x.y", ("a", "c"): "$f(\"}\", 'a,b')", ("d",): '{"e": 1}.e', ("f",): '[1, {"g": 2}]'}
    assert outline("$merge([{}, {}])") == {}
    assert outline('{"a": 1} ~> $string') == {}


def test_an_element_removed_inside_an_array_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Close's contacts[0].name is "" without any name trait: omit_empty removes it inside the array."""
    event = {
        "type": "track",
        "event": "Signed Up",
        "context": GRANTED,
        "traits": {"email": "a@b.co", "company": "Acme", "city": ""},
    }
    assert main(["explain", "close/leads", "--event", json.dumps(event), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outcome"]["outcome"] == "would_send"
    omitted = {o["path"]: o for o in result["steps"]["output"]["omitted"]}
    assert omitted["contacts.0.name"]["value"] == ""
    assert "name" not in result["outcome"]["request"]["body"]["contacts"][0]

    assert main(["explain", "close/leads", "--event", json.dumps(event)]) == 0
    text = capsys.readouterr().out
    assert "omitted: nothing" not in text and 'contacts.0.name = ""' in text
