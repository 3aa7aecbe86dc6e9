"""The record of recent events (engine/state/record.py): bounded, masked, written by a real run.

Every implementation (memory, SQLite, Redis) keeps the same promises: at most
``per_integration`` entries per integration, none older than
``max_age_seconds``, filters and search, a cursor for the live list.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.outcome import DELIVERED, DROPPED, Outcome
from engine.redaction import Redactor
from engine.state.record import (
    SUMMARY_FIELDS,
    MemoryRecord,
    Recorded,
    Recorder,
    RecordLimits,
    RecordQuery,
    integration_name,
    preset_integration,
)
from redis_server import needs_redis, redis_server, redis_url  # noqa: F401 - fixtures
from test_delivery_sandbox import ThreadedSandbox, cli, fast_preset, unique_credentials, write_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _sqlite(tmp_path: Path, limits: RecordLimits, clock: Clock) -> Any:
    from engine.state.sqlite import SqliteState

    return SqliteState(tmp_path / "state", clock=clock).record(limits)


def _redis(url: str, limits: RecordLimits, clock: Clock) -> Any:
    from engine.state.redis import RedisState
    from engine.state.redis.record import RedisRecord

    state = RedisState(url)
    return RedisRecord(state.client, state.keys, limits, clock=clock, wire=state.wire)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_record(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[RecordLimits, Clock], Any]]:
    if request.param == "memory":
        yield lambda limits, clock: MemoryRecord(limits, clock=clock)
    elif request.param == "sqlite":
        yield lambda limits, clock: _sqlite(tmp_path, limits, clock)
    else:
        if needs_redis.args[0]:
            pytest.skip(needs_redis.kwargs["reason"])
        url = request.getfixturevalue("redis_url")
        yield lambda limits, clock: _redis(url, limits, clock)


def entry(clock: Clock, integration: str, i: int, **extra: Any) -> Recorded:
    return Recorded.of(
        {
            "at": clock.now,
            "integration": integration,
            "messageId": f"m-{integration}-{i}",
            "email": f"Person{i}@Example.com",
            "userId": f"user-{i}",
            "outcome": DELIVERED,
            "reason": None,
            "cause": None,
            "status": 201,
            "attempts": 1,
            "latency_ms": 3.0,
            "incoming": {"type": "track"},
            **extra,
        }
    )


def test_the_record_keeps_at_most_its_count_per_integration(make_record: Any) -> None:
    clock = Clock()
    record = make_record(RecordLimits(per_integration=3), clock)
    record.add_many([entry(clock, "a", i) for i in range(5)] + [entry(clock, "b", 0)])
    record.add_many([entry(clock, "a", 5)])
    kept = record.recent(RecordQuery(limit=100))
    assert [r["messageId"] for r in kept if r["integration"] == "a"] == ["m-a-5", "m-a-4", "m-a-3"]
    assert [r["messageId"] for r in kept if r["integration"] == "b"] == ["m-b-0"]
    assert record.integrations() == ["a", "b"]


def test_entries_of_one_instant_are_listed_newest_first(make_record: Any) -> None:
    """The Event Debugger lists the newest first, also among entries written in the same millisecond (a batch
    of one flush): their order is the order they were added in, past ten of them too."""
    clock = Clock()
    record = make_record(RecordLimits(per_integration=100), clock)
    record.add_many([entry(clock, "a", i) for i in range(12)])
    assert [r["messageId"] for r in record.recent(RecordQuery(limit=12))] == [f"m-a-{i}" for i in reversed(range(12))]


def test_the_record_forgets_what_is_older_than_its_age(make_record: Any) -> None:
    clock = Clock()
    record = make_record(RecordLimits(max_age_seconds=60), clock)
    record.add_many([entry(clock, "a", 0)])
    clock.now += 61
    record.add_many([entry(clock, "a", 1)])
    assert [r["messageId"] for r in record.recent(RecordQuery())] == ["m-a-1"]
    assert [r["messageId"] for r in record.window(clock.now - 3600)] == ["m-a-1"]


def test_an_entry_whose_clock_is_behind_the_newest_is_kept_too(make_record: Any) -> None:
    """Workers' clocks differ: Redis refuses an id below the stream's newest, and the entry goes in at its time."""
    clock = Clock()
    record = make_record(RecordLimits(), clock)
    record.add_many([entry(clock, "a", 0)])
    clock.now -= 5
    record.add_many([entry(clock, "a", 1), entry(clock, "b", 0)])
    kept = {r["messageId"] for r in record.recent(RecordQuery(limit=100))}
    assert kept == {"m-a-0", "m-a-1", "m-b-0"}
    assert record.integrations() == ["a", "b"]


def test_a_batch_larger_than_one_statement_keeps_every_entry_in_order(make_record: Any) -> None:
    """SQLite adds a batch by statements of many rows: a batch of several statements and a remainder."""
    clock = Clock()
    record = make_record(RecordLimits(per_integration=1000), clock)

    def entries(numbers: range) -> list[Recorded]:
        out = []
        for i in numbers:
            clock.now += 0.01  # each its own time, as real entries (Redis orders equal times by id text)
            out.append(entry(clock, "a", i))
        return out

    record.add_many(entries(range(150)))
    rows = record.recent(RecordQuery(limit=1000))
    assert [r["messageId"] for r in rows] == [f"m-a-{i}" for i in reversed(range(150))]
    assert record.get(rows[-1]["id"])["email"] == "Person0@Example.com"
    first, cursor = record.since(None)
    record.add_many(entries(range(150, 215)))
    later, _ = record.since(cursor)
    assert first == [] and [r["messageId"] for r in later] == [f"m-a-{i}" for i in range(150, 215)]


def test_sqlite_writes_a_batch_of_any_size_in_order_with_a_few_statement_texts(tmp_path: Path) -> None:
    """Batches of every size are written by statements of 64 rows and powers of two: seven texts at most,
    which the sqlite3 module keeps compiled (a text per size would be compiled anew for each new size)."""
    from engine.state.sqlite import record as sqlite_record

    clock = Clock()
    record = _sqlite(tmp_path, RecordLimits(per_integration=10_000), clock)
    sqlite_record._insert.cache_clear()
    number = 0
    for size in range(1, 140):
        batch = []
        for _ in range(size):
            clock.now += 0.001
            batch.append(entry(clock, "a", number))
            number += 1
        record.add_many(batch)
    rows = record.recent(RecordQuery(limit=20_000))
    assert [r["messageId"] for r in rows] == [f"m-a-{i}" for i in reversed(range(number))]
    assert sqlite_record._insert.cache_info().currsize <= 7
    assert [rows for _, rows in sqlite_record._chunks(150)] == [64, 64, 16, 4, 2]


def test_filters_search_get_and_the_live_cursor(make_record: Any) -> None:
    clock = Clock()
    record = make_record(RecordLimits(), clock)
    record.add_many(
        [
            entry(clock, "a", 1),
            entry(clock, "b", 2, outcome=DROPPED, reason="no_consent", status=None),
            entry(clock, "a", 3, outcome="dead_lettered", cause="http_500", status=500),
        ]
    )
    ids = lambda q: [r["messageId"] for r in record.recent(q)]  # noqa: E731
    assert ids(RecordQuery(integration="a")) == ["m-a-3", "m-a-1"]
    assert ids(RecordQuery(outcome=DROPPED)) == ["m-b-2"]
    assert ids(RecordQuery(reason="no_consent")) == ["m-b-2"]
    assert ids(RecordQuery(reason="http_500")) == ["m-a-3"]
    assert ids(RecordQuery(search="person3@example")) == ["m-a-3"]  # part of an email, any case
    assert ids(RecordQuery(search="user-1")) == ["m-a-1"]  # a userId, whole
    assert ids(RecordQuery(search="m-b-2")) == ["m-b-2"]  # a messageId
    assert ids(RecordQuery(search="user-")) == []  # a userId is not matched by a part
    row = record.recent(RecordQuery(search="m-a-1"))[0]
    assert record.get(row["id"])["incoming"] == {"type": "track"}
    assert record.get("nonsense") is None
    rows, cursor = record.since(None)
    assert rows == []
    clock.now += 1
    record.add_many([entry(clock, "b", 4), entry(clock, "c", 5)])
    rows, cursor2 = record.since(cursor)
    assert [r["messageId"] for r in rows] == ["m-b-4", "m-c-5"]
    assert record.since(cursor2)[0] == []


def test_integration_names_follow_the_agreed_derivation() -> None:
    assert integration_name("outreach/lead-capture") == "outreach-lead-capture"
    assert integration_name("  HubSpot // Contacts_v2 ") == "hubspot-contacts-v2"
    assert (
        preset_integration("outreach/lead-capture", "/x/presets/outreach/lead-capture.yaml") == "outreach-lead-capture"
    )
    assert preset_integration("outreach/lead-capture", "/tmp/My Leads.yaml") == "my-leads"


def test_the_recorder_masks_secrets_and_caps_response_bodies() -> None:
    store = MemoryRecord()
    recorder = Recorder(store, "acme", "acme/leads", redactor=Redactor(["s3cret-value"]))
    outcome = Outcome(
        0,
        "m1",
        DELIVERED,
        request={"url": "https://x.test/?k=s3cret-value"},
        response={"status": 201, "body": "x" * 10_000},
        attempts=2,
    )
    recorder.note({"type": "track", "userId": "u1", "traits": {"email": "a@b.c", "note": "s3cret-value"}}, outcome, 0.5)
    recorder.close()
    kept = store.get(store.recent(RecordQuery())[0]["id"])
    assert "s3cret-value" not in json.dumps(kept)
    assert kept["email"] == "a@b.c" and kept["userId"] == "u1" and kept["attempts"] == 2
    assert kept["latency_ms"] == 500.0 and kept["status"] == 201
    assert len(kept["outcome_record"]["response"]["body"]) < 4200


def test_a_delivering_run_records_every_outcome_masked(tmp_path: Path) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:
        preset = fast_preset(tmp_path)
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        consent = {"consent": {"canonical": {"marketing": True}}}
        events = [
            {
                "type": "identify",
                "messageId": "r-id",
                "userId": "u-1",
                "context": consent,
                "traits": {"email": "Rec.Ord@Example.com", "firstName": "Rec", "lastName": "Ord"},
            },
            {"type": "track", "event": "Demo Requested", "messageId": "r-lead", "userId": "u-1", "context": consent},
            {"type": "page", "messageId": "r-page", "anonymousId": "a-1"},
        ]
        (tmp_path / "events.ndjson").write_text("".join(json.dumps(e) + "\n" for e in events))
        proc = cli(
            "run", preset, "--events", tmp_path / "events.ndjson", "--settings", settings, "--state", tmp_path / "state"
        )
        assert proc.returncode == 0, proc.stderr
        issued = list(sandbox.issued)
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    # Each entry is one text, its summary read back from it (the summary column is for rows written before).
    kept = db.execute("SELECT summary, entry FROM record ORDER BY seq").fetchall()
    assert [s for s, _ in kept] == ["", "", ""]
    rows = [json.loads(e) for _, e in kept]
    by_id = {r["messageId"]: r for r in rows}
    assert set(by_id) == {"r-id", "r-lead", "r-page"}
    lead = by_id["r-lead"]
    assert lead["integration"] == "lead-capture-fast"  # a preset file: its stem
    assert lead["outcome"] == "delivered" and lead["status"] == 201 and lead["attempts"] == 1
    assert lead["email"] == "rec.ord@example.com" and lead["userId"] == "u-1"  # joined from the identify, normalised
    assert lead["outcome_record"]["request"]["headers"]["Authorization"] != ""
    assert "rec.ord@example.com" in json.dumps(lead["outcome_record"]["request"]["body"])
    assert by_id["r-page"]["reason"] == "event_not_mapped"
    assert by_id["r-id"]["email"] == "Rec.Ord@Example.com"
    text = "\n".join(json.dumps(r) for r in rows)
    assert "rec.ord@example.com" in text
    for secret in (creds["client_secret"], creds["refresh_token"], *issued):
        assert secret not in text


def test_run_no_record_keeps_nothing(tmp_path: Path) -> None:
    creds = unique_credentials()
    with ThreadedSandbox(**creds) as sandbox:
        settings = write_settings(tmp_path / "settings.yaml", sandbox.base_url, creds)
        (tmp_path / "events.ndjson").write_text(json.dumps({"type": "page", "messageId": "p"}) + "\n")
        proc = cli(
            "run",
            fast_preset(tmp_path),
            "--events",
            tmp_path / "events.ndjson",
            "--settings",
            settings,
            "--state",
            tmp_path / "state",
            "--no-record",
        )
        assert proc.returncode == 0, proc.stderr
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'record'").fetchall()


def test_a_secret_that_json_escapes_is_masked_in_the_record_too() -> None:
    store = MemoryRecord()
    odd = 'pa"ss\\wörd-123'
    recorder = Recorder(store, "acme", "acme/leads", redactor=Redactor([odd]))
    recorder.note({"type": "track", "traits": {"note": f"x{odd}y"}}, Outcome(0, "m1", DROPPED, reason="no_consent"))
    recorder.close()
    kept = store.get(store.recent(RecordQuery())[0]["id"])
    assert kept["incoming"]["traits"]["note"] == "x***y"


def test_sqlite_trims_each_tenth_of_its_limit_and_what_is_old_once_a_minute(tmp_path: Path) -> None:
    """Trimming to the count walks the limit's worth of an index: a writer does it at its first write, then
    each time a tenth of the limit was added, so the table is at most a tenth over its limit for a while."""
    clock = Clock()
    record = _sqlite(tmp_path, RecordLimits(per_integration=20, max_age_seconds=3600), clock)
    count = lambda: len(record)  # noqa: E731
    record.add_many([entry(clock, "a", i) for i in range(25)])
    assert count() == 20  # the first write trims
    record.add_many([entry(clock, "a", 25)])
    assert count() == 21  # one more than the limit, less than a tenth of it
    clock.now += 10
    record.add_many([entry(clock, "a", 26)])
    assert count() == 20  # a tenth (2) added since the trim
    assert [r["messageId"] for r in record.recent(RecordQuery(limit=2))] == ["m-a-26", "m-a-25"]
    clock.now += 3591
    record.add_many([entry(clock, "b", 0)])  # the age trim: all of a is too old but a-26, 3,591 s old
    assert [r["messageId"] for r in record.recent(RecordQuery())] == ["m-b-0", "m-a-26"]
    clock.now += 20
    record.add_many([entry(clock, "b", 1)])  # a-26 is too old now, but the last age trim was 20 s ago
    assert count() == 3
    clock.now += 41
    record.add_many([entry(clock, "b", 2)])
    assert [r["messageId"] for r in record.recent(RecordQuery())] == ["m-b-2", "m-b-1", "m-b-0"]


def test_the_last_response_body_is_stored_once_and_read_back_in_both_places(tmp_path: Path) -> None:
    from engine.state.sqlite import SqliteState

    state = SqliteState(tmp_path / "state")
    store = state.record(RecordLimits())
    recorder = Recorder(store, "acme", "acme/leads", redactor=Redactor(["s3cret-value"]))
    created = {"data": {"id": 41, "attributes": {"emails": ["ada@example.com"], "marker": "only-once-4f2"}}}
    outcome = Outcome(0, "m1", DELIVERED, response={"status": 201, "body": created}, attempts=1)
    outcome.exchanges = [
        {"step": "lookup", "method": "GET", "url": "https://x.test/p", "status": 200, "body": {"data": []}},
        {"step": "request", "method": "POST", "url": "https://x.test/p", "status": 201, "body": created},
    ]
    recorder.note({"type": "track", "userId": "u1"}, outcome, 0.1)
    recorder.close()
    (text,) = state.db.read("SELECT entry FROM record")[0]
    assert text.count("only-once-4f2") == 1
    kept = store.get(store.recent(RecordQuery())[0]["id"])
    assert [ex.get("body") for ex in kept["exchanges"]] == [{"data": []}, created]
    assert kept["exchanges"][1] == {**outcome.exchanges[1]}
    assert kept["outcome_record"]["response"]["body"] == created
    # A last body that is not the outcome's (a retry's answer differs) is kept in its line.
    other = Outcome(1, "m2", DELIVERED, response={"status": 201, "body": {"data": {"id": 42}}}, attempts=2)
    other.exchanges = [{"step": "request", "status": 201, "body": {"data": {"id": 43}}}]
    recorder.note({"type": "track", "userId": "u2"}, other, 0.1)
    recorder.close()
    again = store.get(store.recent(RecordQuery(search="m2"))[0]["id"])
    assert again["exchanges"][0]["body"] == {"data": {"id": 43}}
    state.close()


def test_a_secret_in_a_searched_field_is_masked_in_its_column_too(tmp_path: Path) -> None:
    clock = Clock()
    store = _sqlite(tmp_path, RecordLimits(), clock)  # SQLite searches its columns, not the summary
    recorder = Recorder(store, "acme", "acme/leads", redactor=Redactor(["s3cret-value"]), clock=clock)
    recorder.note({"type": "track", "userId": "u-s3cret-value"}, Outcome(0, "m-s3cret-value", DROPPED, reason="x"))
    recorder.close()
    assert store.recent(RecordQuery(search="u-s3cret-value")) == []
    assert store.recent(RecordQuery(search="m-s3cret-value")) == []
    (row,) = store.recent(RecordQuery(search="u-***"))
    assert row["userId"] == "u-***" and row["messageId"] == "m-***"


def _trail_of_one_request(redactor: Redactor, url: str, headers: dict[str, str], body: Any) -> Any:
    """A real TrailingTransport's trail of one request, answered with ``headers`` and ``body``."""
    import asyncio

    from multidict import CIMultiDict

    from engine.delivery.trail import TrailingTransport, start_trail
    from engine.delivery.transport import HttpResponse
    from engine.envelope import HttpRequest

    class Answers:
        async def send(self, request: HttpRequest) -> HttpResponse:
            return HttpResponse(201, CIMultiDict(headers), body)

    transport = TrailingTransport(Answers(), redactor)

    async def one() -> Any:
        trail = start_trail()
        await transport.send(HttpRequest("POST", url))
        return trail

    return asyncio.run(one())


def test_the_trail_and_the_event_are_masked_when_the_batch_is_written(tmp_path: Path) -> None:
    """The recorder keeps raw values until its flush, which masks the serialised batch: nothing reaches the store
    unmasked, including a secret learned after the request (a token minted later) and one that JSON escapes."""
    from engine.redaction import MASK
    from engine.state.sqlite import SqliteState

    secret, odd = "s3cret-value", 'pa"ss\\wörd-123'
    redactor = Redactor([secret, odd])
    answer = {"echo": f"x{secret}y", "said": f"he said {odd}", "later": "tok-minted-later-99"}
    trail = _trail_of_one_request(
        redactor, f"https://x.test/v1/{secret}/contacts", {"X-RateLimit-Remaining": f"9 {secret}"}, answer
    )
    redactor.add("tok-minted-later-99")  # learned after the request, before the flush
    state = SqliteState(tmp_path / "state")
    store = state.record(RecordLimits())
    recorder = Recorder(store, "acme", "acme/leads", redactor=redactor)
    outcome = Outcome(0, f"m-{secret}", DELIVERED, response=redactor.redact({"status": 201, "body": answer}))
    event = {"type": "track", "userId": f"u-{secret}", "traits": {"email": f"{secret}@x.test", "note": odd}}
    recorder.note(event, outcome, 0.1, traits={"email": f"{secret}@x.test"}, trail=trail)
    recorder.close()
    stored = json.dumps(state.db.read("SELECT * FROM record"), ensure_ascii=False)
    for value in (secret, odd, json.dumps(odd)[1:-1], "tok-minted-later-99"):
        assert value not in stored
    kept = store.get(store.recent(RecordQuery())[0]["id"])
    (line,) = kept["exchanges"]
    assert line["url"] == f"https://x.test/v1/{MASK}/contacts"
    assert line["headers"] == {"X-RateLimit-Remaining": f"9 {MASK}"}
    assert line["body"] == {"echo": f"x{MASK}y", "said": f"he said {MASK}", "later": MASK}
    assert kept["userId"] == f"u-{MASK}" and kept["incoming"]["traits"]["note"] == MASK
    assert store.recent(RecordQuery(search=secret)) == [] and len(store.recent(RecordQuery(search="u-***"))) == 1
    state.close()


def test_a_secret_spanning_two_texts_of_a_batch_is_masked_text_by_text() -> None:
    """The batch is masked as one text joined by line feeds; a secret that holds one could span two entries'
    texts there: then each text is masked on its own, and every entry still reads."""
    spanning = '0}\n{"preset_path"'  # a summary's end and the details' start, joined
    store = MemoryRecord()
    recorder = Recorder(store, "acme", "acme/leads", redactor=Redactor([spanning, "s3cret-value"]))

    async def two() -> None:
        recorder.note({"type": "track", "userId": "s3cret-value"}, Outcome(0, "m1", DROPPED, reason="x"))
        recorder.note({"type": "track", "userId": "u2"}, Outcome(1, "m2", DROPPED, reason="x"))

    import asyncio

    asyncio.run(two())
    recorder.close()
    rows = store.recent(RecordQuery())
    assert [r["messageId"] for r in rows] == ["m2", "m1"]
    assert [store.get(r["id"])["userId"] for r in rows] == ["u2", "***"]


def test_a_batch_that_cannot_be_written_costs_no_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush can run inside a delivery's task (the batch full at a note): whatever fails while the batch is
    serialised and masked is a log line, never an exception in the caller that noted the outcome."""
    store = MemoryRecord()
    recorder = Recorder(store, "acme", "acme/leads", redactor=Redactor([]))

    def broken(built: Any) -> Any:
        raise ValueError("a value the serialiser refuses")

    monkeypatch.setattr(recorder, "_written", broken)
    recorder.note({"type": "track", "userId": "u1"}, Outcome(0, "m1", DROPPED, reason="x"))
    recorder.flush()  # no exception
    recorder.close()
    assert store.recent(RecordQuery()) == []


@pytest.mark.parametrize("body", [{"data": {"id": 7, "note": "s3cret-value"}}, "x" * 10_000, None])
def test_an_outcome_printed_first_is_recorded_from_its_line_the_same_and_masked(body: Any) -> None:
    """``run`` prints an outcome before the record's flush: the record writes that line's characters as they are
    (not serialised again), masked with its batch, and reads back what it would have built itself."""
    import io

    from engine.cli.common import emit

    def outcome(printed: bool) -> Outcome:
        made = Outcome(
            0,
            "m1",
            DELIVERED,
            request={"method": "POST", "url": "https://x.test/p", "body": {"token": "s3cret-value", "n": 1}},
            response={"status": 201, "body": body},
            attempts=1,
        )
        if printed:
            stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
            emit(made, stream)
            assert made.printed is not None and json.loads(made.printed) == made.to_dict()
        return made

    kept = []
    for printed in (False, True):
        store = MemoryRecord(clock=lambda: 1000.0)
        recorder = Recorder(store, "acme", "acme/leads", redactor=Redactor(["s3cret-value"]), clock=lambda: 1000.0)
        recorder.note({"type": "track", "userId": "u1"}, outcome(printed), 0.1)
        recorder.close()
        (only,) = store._entries
        assert "s3cret-value" not in only[1].entry and "s3cret-value" not in only[1].summary
        kept.append(store.get(only[0]))
    assert kept[1] == kept[0]
    assert kept[1]["outcome_record"]["request"]["body"]["token"] != "s3cret-value"
    if body is not None and isinstance(body, str):
        assert len(kept[1]["outcome_record"]["response"]["body"]) < 4200  # cut, not the printed whole


def test_a_line_printed_with_ascii_escapes_is_not_kept_for_the_record() -> None:
    import io

    from engine.cli.common import emit

    made = Outcome(0, "m1", DELIVERED, response={"status": 201, "body": {"name": "Zoë"}})
    stream = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    emit(made, stream)
    assert made.printed is None
    emit(made, io.TextIOWrapper(io.BytesIO(), encoding="utf-8"))
    assert (
        made.printed
        == '{"index":0,"messageId":"m1","outcome":"delivered","response":{"status":201,"body":{"name":"Zoë"}}}'
    )


def test_entries_written_with_a_summary_of_their_own_read_as_before_beside_new_ones(make_record: Any) -> None:
    """Entries written while the summary was a text of its own (and before that, everything in the details) read
    back the same as one written now, as one text: listed, searched, followed live and opened."""
    clock = Clock()
    record = make_record(RecordLimits(), clock)
    cursor = record.since(None)[1]
    new = entry(clock, "a", 0, traits={"email": "Person0@Example.com"})
    whole_entry = json.loads(new.entry)
    row = {k: whole_entry[k] for k in SUMMARY_FIELDS if k != "id"}
    details = {k: v for k, v in whole_entry.items() if k not in row}
    apart = new._replace(summary=json.dumps(row), entry=json.dumps(details))  # two texts
    everything = new._replace(summary=json.dumps(row), entry=new.entry)  # all of it in the details too
    assert new.summary == "" and set(json.loads(new.entry)) == set(row) | set(details)
    record.add_many([new, apart, everything])
    listed = record.recent(RecordQuery(search="person0@example.com"))
    assert len(listed) == 3
    assert [{k: v for k, v in r.items() if k != "id"} for r in listed] == [row] * 3
    assert list(listed[0]) == [*row, "id"]
    opened = [record.get(r["id"]) for r in listed]
    assert all({k: v for k, v in o.items() if k != "id"} == whole_entry for o in opened)
    followed, _ = record.since(cursor)
    assert [{k: v for k, v in r.items() if k != "id"} for r in followed] == [row] * 3
    assert [{k: v for k, v in r.items() if k != "id"} for r in record.window(clock.now - 1)] == [row] * 3
