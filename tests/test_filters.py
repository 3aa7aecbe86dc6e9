"""Filter stage: event shape, event table, consent gate, identity memory."""

from __future__ import annotations

from typing import Any

import pytest

from engine import outcome as oc
from engine.compile.compiler import events_spec, load_preset
from engine.event_identity import message_id_of
from engine.language.expressions import Expression
from engine.language.model import EventsSpec
from engine.language.settings import resolve
from engine.pipeline.consent import ConsentGate
from engine.pipeline.event_shape import shape_problem
from engine.pipeline.identity import IdentityMemory, merged_traits
from engine.pipeline.prepare import Pipeline
from engine.state.identity import IdentityLimits, MemoryIdentityStore

CONSENTED = {"consent": {"canonical": {"marketing": True}}}


def pipeline(**settings: Any) -> Pipeline:
    preset = load_preset("outreach/lead-capture")
    return Pipeline(preset, resolve(preset.settings, settings, require=False))


def lead(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "track",
        "event": "Demo Requested",
        "userId": "u1",
        "context": {"consent": {"canonical": {"marketing": True}}},
        "traits": {"email": "jane.doe@acme.com"},
    }
    event.update(fields)
    return event


def attributes(result: oc.Outcome) -> dict[str, Any]:
    assert result.outcome == oc.WOULD_SEND, result
    assert result.request is not None
    return result.request["body"]["data"]["attributes"]


# --------------------------------------------------------------------------
# consent gate
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "consent",
    [
        {"canonical": {"marketing": True}},
        {"marketing": True},
        {"categories": ["marketing"]},
        {"categories": ["MARKETING", "analytics"]},
    ],
    ids=["canonical", "flat-legacy", "raw-codes", "raw-codes-case-insensitive"],
)
def test_consent_granted_in_each_shape(consent: dict[str, Any]) -> None:
    gate = ConsentGate.build(["marketing"])
    assert gate.missing({"context": {"consent": consent}}) == []


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"context": {}},
        {"context": None},
        {"context": {"consent": None}},
        {"context": {"consent": ["marketing"]}},
        {"context": {"consent": {}}},
        {"context": {"consent": {"categories": "marketing"}}},
    ],
    ids=["no-context", "no-consent", "null-context", "null-consent", "consent-list", "empty", "categories-not-list"],
)
def test_missing_or_unreadable_consent_fails_closed(event: dict[str, Any]) -> None:
    assert ConsentGate.build(["marketing"]).missing(event) == ["marketing"]


@pytest.mark.parametrize(
    "consent",
    [
        {"canonical": {"marketing": False}},
        {"marketing": False},
        {"categories": []},
        {"categories": ["analytics"]},
    ],
    ids=["canonical-false", "flat-false", "no-codes", "other-code"],
)
def test_consent_refused(consent: dict[str, Any]) -> None:
    assert ConsentGate.build(["marketing"]).missing({"context": {"consent": consent}}) == ["marketing"]


@pytest.mark.parametrize("value", ["true", "True", 1, "yes", [True], {"granted": True}, None])
def test_only_json_true_grants_a_boolean_category(value: Any) -> None:
    gate = ConsentGate.build(["marketing"])
    assert gate.missing({"context": {"consent": {"canonical": {"marketing": value}}}}) == ["marketing"]
    assert gate.missing({"context": {"consent": {"marketing": value}}}) == ["marketing"]


def test_aliases_map_raw_codes_to_a_category() -> None:
    gate = ConsentGate.build(["marketing", "analytics"], {"marketing": ["C0004", "ads"], "analytics": ["C0002"]})
    assert gate.missing({"context": {"consent": {"categories": ["c0004", "C0002"]}}}) == []
    assert gate.missing({"context": {"consent": {"categories": ["ads"]}}}) == ["analytics"]
    # An alias of one category never grants another.
    assert gate.missing({"context": {"consent": {"categories": ["C0002"]}}}) == ["marketing"]
    # Unrelated codes grant nothing.
    assert gate.missing({"context": {"consent": {"categories": ["C0003"]}}}) == ["marketing", "analytics"]


def test_all_required_categories_must_be_granted() -> None:
    gate = ConsentGate.build(["marketing", "analytics"])
    assert gate.missing({"context": {"consent": {"canonical": {"marketing": True}}}}) == ["analytics"]
    assert gate.missing({"context": {"consent": {"canonical": {"marketing": True, "analytics": True}}}}) == []
    assert gate.missing({"context": {"consent": {"marketing": True, "analytics": False}}}) == ["analytics"]
    assert gate.missing({"context": {"consent": {"categories": ["analytics", "marketing"]}}}) == []


def test_pipeline_drops_without_consent_naming_the_categories() -> None:
    result = pipeline(consent_categories=["marketing", "analytics"]).dry_run(
        lead(messageId="m1", context={"consent": {"canonical": {"marketing": True}}})
    )
    assert result.outcome == oc.DROPPED
    assert result.reason == oc.NO_CONSENT
    assert result.message_id == "m1"
    assert result.detail == "consent not granted for: analytics"


def test_pipeline_default_gate_is_marketing() -> None:
    p = pipeline()
    assert p.dry_run(lead(context={})).reason == oc.NO_CONSENT
    assert p.dry_run(lead(context={"consent": {"categories": ["marketing"]}})).outcome == oc.WOULD_SEND
    assert p.dry_run(lead(context={"consent": {"marketing": True}})).outcome == oc.WOULD_SEND


# --------------------------------------------------------------------------
# event table
# --------------------------------------------------------------------------


def _table() -> EventsSpec:
    return events_spec(
        {
            "defaults": {"action": "drop"},
            "track": {
                "Lead Submitted": {
                    "action": "create",
                    "values": {"tag": "lead"},
                    "aliases": ["lead_submitted", "Lead"],
                },
                "Order Completed": {"action": "drop", "aliases": ["order_completed"]},
            },
            "identify": {"action": "upsert_person"},
            "page": {"action": "drop"},
        }
    )


def test_event_table_routes_names_and_aliases_to_the_same_route() -> None:
    table = _table()
    for name in ("Lead Submitted", "lead_submitted", "Lead"):
        route = table.route("track", name)
        assert route is not None, name
        assert (route.name, route.action, dict(route.values)) == ("Lead Submitted", "create", {"tag": "lead"})


def test_event_table_drop_action_and_unknown_names_are_not_routed() -> None:
    table = _table()
    assert table.route("track", "Order Completed") is None
    assert table.route("track", "order_completed") is None
    assert table.route("track", "lead submitted") is None  # names are exact
    assert table.route("track", "Nope") is None
    assert table.route("track", None) is None


def test_event_table_non_track_types() -> None:
    table = _table()
    identify = table.route("identify", None)
    assert identify is not None and identify.action == "upsert_person"
    assert table.route("page", None) is None  # action: drop
    assert table.route("group", None) is None  # not listed
    assert table.route("screen", "Lead Submitted") is None  # a name only routes track events


def test_unmapped_events_are_dropped_before_consent_and_before_any_jsonata(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: Expression, data: Any) -> Any:
        raise AssertionError("JSONata ran for a dropped event")

    monkeypatch.setattr(Expression, "evaluate", explode)
    p = pipeline()
    for event, detail_part in [
        ({"type": "page", "anonymousId": "a1"}, "page events are not mapped"),
        ({"type": "track", "event": "Order Completed", "userId": "u1", "context": CONSENTED}, "'Order Completed'"),
        ({"type": "group", "userId": "u1"}, "group events are not mapped"),
    ]:
        result = p.dry_run(event)
        assert result.outcome == oc.DROPPED
        assert result.reason == oc.EVENT_NOT_MAPPED, event
        assert detail_part in (result.detail or "")
    # An unmapped event without consent is "not mapped", not "no consent".
    assert p.dry_run({"type": "track", "event": "Product Viewed"}).reason == oc.EVENT_NOT_MAPPED


def test_identify_is_not_mapped_but_is_remembered() -> None:
    p = pipeline()
    result = p.dry_run({"type": "identify", "userId": "u1", "traits": {"email": "a@b.co"}})
    assert result.reason == oc.EVENT_NOT_MAPPED
    assert p.memory.recall({"userId": "u1"}) == {"email": "a@b.co"}


def test_filter_order_consent_before_identity() -> None:
    p = pipeline()
    assert p.dry_run(lead(traits={}, context={})).reason == oc.NO_CONSENT
    assert p.dry_run(lead(traits={})).reason == oc.NOT_IDENTIFIED
    bad = p.dry_run(lead(traits={"email": "not-an-email"}))
    assert bad.reason == oc.INVALID_EMAIL
    assert "email" in (bad.detail or "")


def test_lead_aliases_in_the_builtin_table() -> None:
    p = pipeline()
    for name, tag in [
        ("Lead Submitted", "lead"),
        ("Form Submitted", "form"),
        ("Signed Up", "signup"),
        ("Demo Requested", "demo-request"),
    ]:
        assert attributes(p.dry_run(lead(event=name)))["tags"] == ["Signal", tag]


# --------------------------------------------------------------------------
# event shape
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event, field",
    [
        ({"event": "x"}, "'type'"),
        ({"type": "purchase"}, "'type'"),
        ({"type": "track"}, "'event'"),
        ({"type": "track", "event": "  "}, "'event'"),
        ({"type": "track", "event": 5}, "'event'"),
        ({"type": "identify", "traits": ["email"]}, "'traits'"),
        ({"type": "track", "event": "x", "properties": "p"}, "'properties'"),
        ({"type": "page", "context": 3}, "'context'"),
        ({"type": "page", "context": {"traits": "x"}}, "'context.traits'"),
        ({"type": "page", "context": {"consent": ["marketing"]}}, "'context.consent'"),
        ({"type": "page", "userId": True}, "'userId'"),
        ({"type": "page", "anonymousId": {"id": 1}}, "'anonymousId'"),
        ({"type": "page", "messageId": 1.5}, "'messageId'"),
    ],
)
def test_shape_problem_names_the_field(event: dict[str, Any], field: str) -> None:
    problem = shape_problem(event)
    assert problem is not None
    assert f"field {field}" in problem


@pytest.mark.parametrize("value, kind", [([], "an array"), ("x", "a string"), (None, "null"), (3, "a number")])
def test_shape_problem_for_non_objects(value: Any, kind: str) -> None:
    assert shape_problem(value) == f"event must be a JSON object, got {kind}"


@pytest.mark.parametrize(
    "event",
    [
        {"type": "track", "event": "Demo Requested"},
        {"type": "identify", "userId": 42, "traits": None},
        {"type": "page", "anonymousId": "a", "context": {"consent": None, "traits": {}}},
        {"type": "alias", "userId": "u", "previousId": "p"},
    ],
)
def test_valid_shapes(event: dict[str, Any]) -> None:
    assert shape_problem(event) is None


def test_message_id_of() -> None:
    assert message_id_of({"messageId": "m1"}) == "m1"
    assert message_id_of({"messageId": 7}) == "7"
    assert message_id_of({"messageId": True}) is None
    assert message_id_of(["messageId"]) is None


def test_pipeline_turns_a_malformed_event_into_invalid_event() -> None:
    result = pipeline().dry_run({"type": "track", "event": "Demo Requested", "messageId": "m9", "traits": []}, 4)
    assert result.outcome == oc.DROPPED
    assert result.reason == oc.INVALID_EVENT
    assert (result.index, result.message_id) == (4, "m9")
    assert "field 'traits'" in (result.detail or "")
    assert pipeline().dry_run("just a string").reason == oc.INVALID_EVENT


# --------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------


def test_merged_traits_order_remembered_then_context_then_traits() -> None:
    remembered = {"title": "remembered", "company": "R", "city": "R"}
    event = {"context": {"traits": {"title": "context", "company": "C"}}, "traits": {"title": "event"}}
    assert merged_traits(event, remembered) == {"title": "event", "company": "C", "city": "R"}
    assert remembered == {"title": "remembered", "company": "R", "city": "R"}  # not mutated


def test_pipeline_merge_order_end_to_end() -> None:
    p = pipeline()
    p.dry_run(
        {
            "type": "identify",
            "userId": "u1",
            "traits": {"email": "jane@acme.com", "title": "From Identify", "company": "Identify Co", "city": "London"},
        }
    )
    only_memory = attributes(p.dry_run(lead(traits=None)))
    assert (only_memory["emails"], only_memory["title"], only_memory["company"], only_memory["addressCity"]) == (
        ["jane@acme.com"],
        "From Identify",
        "Identify Co",
        "London",
    )
    with_context = attributes(p.dry_run(lead(traits=None, context={**CONSENTED, "traits": {"title": "From Context"}})))
    assert with_context["title"] == "From Context"
    assert with_context["company"] == "Identify Co"
    with_both = attributes(
        p.dry_run(lead(traits={"title": "From Event"}, context={**CONSENTED, "traits": {"title": "From Context"}}))
    )
    assert with_both["title"] == "From Event"
    assert with_both["emails"] == ["jane@acme.com"]


def test_user_id_wins_over_anonymous_id() -> None:
    memory = IdentityMemory()
    memory.remember({"anonymousId": "a1"}, {"email": "anon@x.co", "city": "Paris"})
    memory.remember({"userId": "u1"}, {"email": "user@x.co"})
    assert memory.recall({"userId": "u1", "anonymousId": "a1"}) == {"email": "user@x.co", "city": "Paris"}
    assert memory.recall({"anonymousId": "a1"}) == {"email": "anon@x.co", "city": "Paris"}
    assert memory.recall({"userId": "u2"}) == {}


def test_identify_with_anonymous_id_only_reaches_a_later_track() -> None:
    p = pipeline()
    p.dry_run({"type": "identify", "anonymousId": "a1", "traits": {"email": "anon@acme.com"}})
    result = p.dry_run({"type": "track", "event": "Signed Up", "anonymousId": "a1", "context": CONSENTED})
    assert attributes(result)["emails"] == ["anon@acme.com"]
    # Another device knows nothing.
    other = p.dry_run({"type": "track", "event": "Signed Up", "anonymousId": "a2", "context": CONSENTED})
    assert other.reason == oc.NOT_IDENTIFIED


def test_no_leak_between_users_sharing_an_anonymous_id() -> None:
    p = pipeline()
    p.dry_run(
        {
            "type": "identify",
            "userId": "alice",
            "anonymousId": "shared",
            "traits": {"email": "alice@acme.com", "firstName": "Alice"},
        }
    )
    # Bob, on the same device, with no traits of his own: nothing of Alice's reaches him.
    bob = p.dry_run(
        {"type": "track", "event": "Signed Up", "userId": "bob", "anonymousId": "shared", "context": CONSENTED}
    )
    assert bob.reason == oc.NOT_IDENTIFIED
    # Bob identifies on the shared device; Alice keeps her own traits and never gets Bob's.
    p.dry_run({"type": "identify", "userId": "bob", "anonymousId": "shared", "traits": {"email": "bob@acme.com"}})
    alice = attributes(
        p.dry_run(
            {"type": "track", "event": "Signed Up", "userId": "alice", "anonymousId": "shared", "context": CONSENTED}
        )
    )
    assert alice["emails"] == ["alice@acme.com"]
    assert alice["firstName"] == "Alice"
    bob_after = attributes(
        p.dry_run(
            {"type": "track", "event": "Signed Up", "userId": "bob", "anonymousId": "shared", "context": CONSENTED}
        )
    )
    assert bob_after["emails"] == ["bob@acme.com"]
    assert "firstName" not in bob_after


def test_memory_is_per_pipeline() -> None:
    first, second = pipeline(), pipeline()
    first.dry_run({"type": "identify", "userId": "u1", "traits": {"email": "a@b.co"}})
    assert second.dry_run(lead(traits=None)).reason == oc.NOT_IDENTIFIED


def test_pipeline_uses_the_memory_it_is_given_even_when_empty() -> None:
    preset = load_preset("outreach/lead-capture")
    shared = IdentityMemory(trait_names=["email"])
    p = Pipeline(preset, resolve(preset.settings, {}, require=False), memory=shared)
    assert p.memory is shared
    p.dry_run({"type": "identify", "userId": "u1", "traits": {"email": "a@b.co"}})
    assert shared.recall({"userId": "u1"}) == {"email": "a@b.co"}


def _size(user: str, traits: str) -> int:
    """An entry's size as the preset language defines it: UTF-8 bytes of id field, id, owner and traits JSON."""
    return len("userId") + len(user) + len(user) + len(traits)


def test_byte_bound_evicts_the_least_recently_seen() -> None:
    one = _size("u1", '{"email":"1@x.co"}')
    store = MemoryIdentityStore(IdentityLimits(max_bytes=2 * one))
    memory = IdentityMemory(keys=("userId",), store=store)
    memory.remember({"userId": "u1"}, {"email": "1@x.co"})
    memory.remember({"userId": "u2"}, {"email": "2@x.co"})
    assert memory.recall({"userId": "u1"}) == {"email": "1@x.co"}  # u1 is now the most recently seen
    memory.remember({"userId": "u3"}, {"email": "3@x.co"})
    assert len(store) == 2 and store.bytes_used == 2 * one
    assert memory.recall({"userId": "u2"}) == {}
    assert memory.recall({"userId": "u1"}) == {"email": "1@x.co"}
    assert memory.recall({"userId": "u3"}) == {"email": "3@x.co"}


def test_byte_bound_counts_bytes_not_ids() -> None:
    small = _size("u0", '{"email":"0@x.co"}')
    store = MemoryIdentityStore(IdentityLimits(max_bytes=10 * small))
    memory = IdentityMemory(keys=("userId",), store=store)
    for i in range(10):
        memory.remember({"userId": f"u{i}"}, {"email": f"{i}@x.co"})
    assert len(store) == 10
    # One entry with a title as long as five small entries pushes out the six oldest.
    memory.remember({"userId": "u9"}, {"title": "x" * (5 * small)})
    assert store.bytes_used <= 10 * small
    assert [memory.recall({"userId": f"u{i}"}) != {} for i in range(10)] == [False] * 6 + [True] * 4


def test_entries_expire_after_the_ttl_unless_seen_again() -> None:
    now = [1_000_000.0]
    store = MemoryIdentityStore(IdentityLimits(ttl_seconds=100), clock=lambda: now[0])
    memory = IdentityMemory(keys=("userId",), store=store)
    memory.remember({"userId": "old"}, {"email": "old@x.co"})
    memory.remember({"userId": "kept"}, {"email": "kept@x.co"})
    now[0] += 60
    assert memory.recall({"userId": "kept"}) == {"email": "kept@x.co"}  # seen again: its age starts over
    now[0] += 60
    assert memory.recall({"userId": "old"}) == {}
    assert memory.recall({"userId": "kept"}) == {"email": "kept@x.co"}
    memory.remember({"userId": "new"}, {"email": "new@x.co"})  # a write sweeps what expired
    assert len(store) == 2


def test_a_trait_over_max_trait_bytes_is_not_remembered_but_the_rest_is() -> None:
    memory = IdentityMemory(keys=("userId",), max_trait_bytes=64)
    memory.remember({"userId": "u1"}, {"email": "a@b.co", "title": "t" * 100})
    assert memory.recall({"userId": "u1"}) == {"email": "a@b.co"}
    memory.remember({"userId": "u1"}, {"title": "Head of Growth"})
    memory.remember({"userId": "u1"}, {"title": "é" * 40})  # 80 bytes in UTF-8: too large, the old one stays
    assert memory.recall({"userId": "u1"}) == {"email": "a@b.co", "title": "Head of Growth"}


def test_the_preset_declares_the_identity_bounds() -> None:
    spec = load_preset("outreach/lead-capture").identity
    memory = IdentityMemory.for_preset(spec)
    assert isinstance(memory.store, MemoryIdentityStore)
    assert memory.store.limits == IdentityLimits(ttl_seconds=90 * 86400, max_bytes=512 * 1024 * 1024)
    assert memory.max_trait_bytes == 2048


def test_only_declared_traits_are_stored() -> None:
    memory = IdentityMemory(trait_names=["email", "firstName"])
    memory.remember({"userId": "u1"}, {"email": "a@b.co", "password": "hunter22", "ssn": "123"})
    assert memory.recall({"userId": "u1"}) == {"email": "a@b.co"}
    assert "hunter22" not in repr(memory.store.items())  # type: ignore[attr-defined]
    memory.remember({"userId": "u2"}, {"password": "x"})  # nothing declared: nothing kept
    assert len(memory.store) == 1  # type: ignore[arg-type]


def test_pipeline_memory_keeps_only_the_preset_traits() -> None:
    p = pipeline()
    p.dry_run(
        {"type": "identify", "userId": "u1", "traits": {"email": "a@b.co", "favouriteColour": "green", "plan": "pro"}}
    )
    stored = p.memory.recall({"userId": "u1"})
    assert stored == {"email": "a@b.co"}


def test_later_identify_merges_into_earlier_traits() -> None:
    memory = IdentityMemory()
    memory.remember({"userId": "u1"}, {"email": "a@b.co", "title": "Old"})
    memory.remember({"userId": "u1"}, {"title": "New"})
    assert memory.recall({"userId": "u1"}) == {"email": "a@b.co", "title": "New"}
