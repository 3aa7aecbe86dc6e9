"""The record of recent events: what the console shows, kept bounded and masked.

Every outcome an engine hands out can be written here, with the incoming
event, the masked request, the last response (its body capped), the attempt
count, the latency and the integration it belongs to. It is a window on
recent work, not an archive: each implementation keeps at most
``RecordLimits.per_integration`` entries per integration (10,000 by default)
and none older than ``RecordLimits.max_age_seconds`` (7 days), trimming as it
writes.

Secrets never get here: the request on an outcome is already the masked
view, and :class:`Recorder` passes everything (the incoming event too)
through the engine's :class:`~engine.redaction.Redactor` before it is kept.

Outcomes are buffered and their entries built and committed in batches
(:class:`Recorder`), so recording costs a delivery an item in a list, not a
transaction. Losing the record (a disk that refuses writes) is logged and
costs no event.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import orjson

from ..loggers import package_logger
from ..outcome import Outcome
from ..redaction import Redactor

log = package_logger(__name__)

DEFAULT_PER_INTEGRATION = 10_000
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600.0
RESPONSE_BODY_CAP = 4096  # characters of a response body kept in the record
EVENT_CAP = 16_384  # characters of an incoming event kept whole; a larger one is cut to its identifying fields
FLUSH_EVERY = 512  # entries buffered before a write (a write trims too: fewer, larger ones cost less)
FLUSH_SECONDS = 0.25  # the longest an entry waits in the buffer

# The columns every entry has, for lists and figures, beside the full entry.
SUMMARY_FIELDS = (
    "id",
    "at",
    "integration",
    "preset",
    "messageId",
    "type",
    "event",
    "email",
    "userId",
    "outcome",
    "reason",
    "cause",
    "status",
    "attempts",
    "latency_ms",
    "replay",
    "token_requests",
    "answers_429",
)


@dataclass(frozen=True)
class RecordLimits:
    per_integration: int = DEFAULT_PER_INTEGRATION
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS


DEFAULT_LIMITS = RecordLimits()  # frozen, so one instance serves every store as a default

_INTEGRATION = itemgetter(0)  # a Recorded's integration
TRIM_SHARE = 10  # an integration is trimmed each time a tenth of its limit was added (every entry, below 20)
AGE_TRIM_SECONDS = 60.0  # and what is too old at most once a minute


class TrimSchedule:
    """When a writer trims: trimming to the count walks the limit's worth of an index, so not at every write.

    An integration is trimmed at this writer's first write to it (a lower
    limit than an earlier command's takes effect at once), then each time
    another tenth of its limit was added; entries too old go at the first
    write and then at most once a minute. So a store holds at most a tenth
    more than its limit for a while (per writer), and a trickle of events
    (``serve`` at a few a second) pays a write, not a trim, per flush.
    """

    def __init__(self, limits: RecordLimits) -> None:
        self.step = max(1, limits.per_integration // TRIM_SHARE)
        self._added: dict[str, int] = {}
        self._aged_at: float | None = None

    def to_trim(self, entries: Sequence[Recorded]) -> list[str]:
        """The integrations of ``entries`` that are due (and counted as trimmed: call it when the trim is made)."""
        counts = Counter(map(_INTEGRATION, entries))  # counted in C: a recorder's batch is one integration
        due = []
        for name, count in sorted(counts.items()):
            added = self._added.get(name)
            if added is None or added + count >= self.step:
                due.append(name)
                self._added[name] = 0
            else:
                self._added[name] = added + count
        return due

    def age_due(self, now: float) -> bool:
        if self._aged_at is not None and 0 <= now - self._aged_at < AGE_TRIM_SECONDS:
            return False
        self._aged_at = now
        return True


@dataclass(frozen=True)
class RecordQuery:
    """What the console asks for; every field narrows the answer (``None``: any)."""

    integration: str | None = None
    outcome: str | None = None
    reason: str | None = None  # a drop reason, a failure cause, or a response status ("429")
    search: str | None = None  # an email (part of one), a userId or a messageId
    limit: int = 100

    def matches(self, row: Mapping[str, Any]) -> bool:
        if self.integration and row.get("integration") != self.integration:
            return False
        if self.outcome and row.get("outcome") != self.outcome:
            return False
        if self.reason and self.reason not in (row.get("reason"), row.get("cause"), str(row.get("status"))):
            return False
        if self.search:
            needle = self.search.strip().lower()
            email = str(row.get("email") or "").lower()
            if needle not in email and needle not in (
                str(row.get("userId") or "").lower(),
                str(row.get("messageId") or "").lower(),
            ):
                return False
        return True


class Recorded(NamedTuple):
    """One entry as a store keeps it: the columns it filters on and the full entry as JSON text.

    The text is serialized (and masked) once, by the :class:`Recorder`; a
    store adds the entry's ``id`` when it reads it back, and the summary the
    console lists is read from it (:func:`summary_row`). Entries written
    before kept the summary as a text of its own: they read the same.
    """

    integration: str
    at: float
    outcome: str | None
    # The search columns: lower-cased; '' when the entry has none (None in entries written before: a store
    # searches them alike). Not None: Python's sqlite3 binds None through its adaptation protocol, which fails
    # (an exception formatted and cleared) before it binds NULL: about a third of a microsecond a value.
    reason: str | None  # the drop reason, else the failure cause
    email: str | None
    user_id: str | None
    message_id: str | None
    summary: str  # '' (what the Recorder writes): read from the entry; a text in entries written before
    entry: str

    @classmethod
    def of(cls, entry: Mapping[str, Any], mask: Callable[[str], str] = lambda text: text) -> Recorded:
        """A whole entry as the :class:`Recorder` keeps it: one text, the summary's fields first, the summary ''."""
        row = summary(entry)
        text = _json({**row, **{k: v for k, v in entry.items() if k not in _SUMMARY_KEYS and k != "id"}})
        # The search columns are values of the entry: when its text holds no secret (nearly always),
        # neither do they; else each is masked on its own, as the text is.
        clean = mask(text) is text

        def lower(value: Any) -> str:
            return (value if clean else mask(value)).lower() if isinstance(value, str) else ""

        return cls(
            str(row["integration"]),
            float(row["at"]),
            row["outcome"],
            row["reason"] or row["cause"] or "",
            lower(row["email"]),
            lower(row["userId"]),
            lower(row["messageId"]),
            "",
            text if clean else mask(text),
        )

    def summary_row(self, entry_id: str) -> dict[str, Any]:
        return summary_row(self.summary, self.entry, entry_id)

    def full(self, entry_id: str) -> dict[str, Any]:
        return whole(self.summary, self.entry, entry_id)


def summary_row(summary_text: str | bytes, entry_text: str | bytes, entry_id: str) -> dict[str, Any]:
    """An entry's summary (:data:`SUMMARY_FIELDS`) as the console lists it.

    An entry is written as one text, its summary empty: the summary is read
    from the entry (what the console lists is what it opens). An entry
    written while the summary was a text of its own reads that text.
    """
    if summary_text:
        return {**orjson.loads(summary_text), "id": entry_id}
    return {**summary(orjson.loads(entry_text)), "id": entry_id}


def whole(summary_text: str | bytes, entry_text: str | bytes, entry_id: str) -> dict[str, Any]:
    """One entry as the console reads it: its summary and its details, merged.

    An entry is written as one text (its summary empty). One written while
    the two were kept apart reads them merged; one written before that holds
    everything in its details: merged over the summary, it reads the same.
    The last request's response body, kept once when it is the outcome's, is
    put back in its line.
    """
    if summary_text:
        entry = {**orjson.loads(summary_text), **orjson.loads(entry_text), "id": entry_id}
    else:
        entry = {**orjson.loads(entry_text), "id": entry_id}
    exchanges = entry.get("exchanges")
    if exchanges and isinstance(exchanges[-1], dict) and exchanges[-1].pop(_BODY_IS_RESPONSE, False):
        exchanges[-1]["body"] = ((entry.get("outcome_record") or {}).get("response") or {}).get("body")
    return entry


_BODY_IS_RESPONSE = "body_is_the_response_body"


def _json(value: Any) -> str:
    return _json_bytes(value).decode()


def _json_bytes(value: Any) -> bytes:
    """Compact JSON; a key that is not a string is written as one (half as fast, so only when one is there)."""
    try:
        return orjson.dumps(value, default=str)
    except TypeError:  # orjson.JSONEncodeError included
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


class EventRecord(Protocol):
    """A bounded store of recent outcomes; every call is atomic and safe beside a writer in another process."""

    def add_many(self, entries: Sequence[Recorded]) -> None:
        """Keep these entries, then trim to the limits."""

    def recent(self, query: RecordQuery) -> list[dict[str, Any]]:
        """Summary rows (:data:`SUMMARY_FIELDS`), newest first."""

    def get(self, entry_id: str) -> dict[str, Any] | None:
        """One full entry, or ``None`` when it is gone (trimmed) or never was."""

    def since(self, cursor: str | None) -> tuple[list[dict[str, Any]], str]:
        """Summary rows added after ``cursor``, oldest first, and the cursor to ask with next.

        ``None`` starts from now: no rows, just the cursor (the live list's start)."""

    def window(self, since: float) -> list[dict[str, Any]]:
        """Summary rows recorded at or after ``since`` (a Unix time), for the figures."""

    def integrations(self) -> list[str]:
        """The integrations that have entries, sorted."""


def integration_name(preset_name: str) -> str:
    """The name an integration of one preset goes by: ``outreach/lead-capture`` → ``outreach-lead-capture``.

    Lower-cased; each run of characters outside ``[a-z0-9]`` becomes one
    ``-``; no ``-`` at either end; at most 63 characters (an integrations
    file's name rule, so the name also keys a queue row and a consumer group).
    The one rule for every one-preset form (``run``, ``serve PRESET``,
    ``dlq replay PRESET``, the console): see :func:`preset_integration`.
    """
    return re.sub(r"[^a-z0-9]+", "-", preset_name.lower()).strip("-")[:63].strip("-") or "preset"


# An integration's name (an integrations file's key, one set up in the console): it keys stores and Redis keys.
INTEGRATION_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def preset_integration(name: str, path: str | Path | None) -> str:
    """A preset's integration name: a built-in (or a preset found by name) by its name, a preset file by its stem.

    A file is taken as found by name when its path ends with the name
    (``…/outreach/lead-capture.yaml`` for ``outreach/lead-capture``), so
    ``outreach/lead-capture`` and ``presets/outreach/lead-capture.yaml`` are
    one integration, whichever way a command was given it.
    """
    if path is None:
        return integration_name(name)
    file = Path(path)
    if file.with_suffix("").as_posix().endswith("/" + name.strip("/")) or file.with_suffix("").as_posix() == name:
        return integration_name(name)
    return integration_name(file.stem)


def summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The summary columns of an entry (its ``id`` is the store's, added as it is read)."""
    return {key: entry.get(key) for key in SUMMARY_FIELDS if key != "id"}


_SUMMARY_KEYS = frozenset(SUMMARY_FIELDS)


class Trail(Protocol):
    """The requests of one delivery (:mod:`engine.delivery.trail`), as a delivery hands them to its record."""

    def __len__(self) -> int: ...

    def unmasked_lines(self, known: tuple[Any, int] | None = None) -> list[dict[str, Any]]:
        """Each request's line, its values as they were: the record masks them with the rest of its batch.

        ``known``: the outcome's response body and the length of its JSON text, measured already.
        """


class Recorder:
    """Turns an engine's outcomes into record entries and writes them in batches.

    ``note`` is called on the delivery path, so it only appends what the
    entry will be made of (references: the event, the outcome, the trail of
    its requests); at :data:`FLUSH_EVERY` entries, after
    :data:`FLUSH_SECONDS`, or at :meth:`close`, the entries are built,
    serialised, masked and written together. Measured whole-process, building
    them in one loop costs a lead far less than building each between two
    deliveries. A process killed with ``kill -9`` loses at most that last
    quarter second of the record (never an outcome: the record is a view).

    What is masked, and when: the buffer holds raw values (the incoming
    event, the traits, each request's URL, rate-limit headers and answer),
    and never lets them out but through :meth:`flush`, which serialises a
    batch's entries and masks the batch's text in one pass per secret form
    (:meth:`~engine.redaction.Redactor.redact_json`) before anything is
    written. Masking at the flush also knows every token minted by then.
    """

    def __init__(
        self,
        store: EventRecord,
        integration: str,
        preset: str,
        *,
        redactor: Redactor,
        preset_path: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.integration = integration
        self.preset = preset
        self.preset_path = preset_path
        self.redactor = redactor
        self._clock = clock
        self._buffer: list[_Noted] = []
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False

    def note(
        self,
        event: Any,
        outcome: Outcome,
        latency_seconds: float | None = None,
        *,
        replay: bool = False,
        traits: Mapping[str, Any] | None = None,
        trail: Trail | None = None,
    ) -> None:
        """``traits``: the event's traits as the pipeline resolved them (joined from an identify), if it got that far.
        ``trail``: the requests of its delivery, their values as they were: kept in this recorder's buffer only,
        and masked with the rest of the batch when it is written.

        Only the references are kept here; the entries are built, serialised
        and written together at the flush, in one tight loop (cheaper than
        one at a time between deliveries). What is referenced is not changed
        after its outcome: the event was read for this outcome, the outcome
        is final.
        """
        incoming = event if isinstance(event, dict) else None
        if incoming is None and replay and outcome.message_id:
            incoming = self._earlier_event(outcome.message_id)
        self._buffer.append((self._clock(), incoming, outcome, latency_seconds, replay, traits, trail))
        if len(self._buffer) >= FLUSH_EVERY:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        noted, self._buffer = self._buffer, []
        built: list[_Parts] = []
        for item in noted:
            try:
                built.append(self._parts(*item))
            except Exception as exc:  # noqa: BLE001 - the record is a view; it must never cost an outcome
                log.warning("record: could not record event %s: %s", item[2].index, type(exc).__name__)
        try:
            entries = self._written(built)
        except Exception as exc:  # noqa: BLE001 - a flush can run inside a delivery's task: see above
            log.warning("record: could not record %d event(s): %s", len(built), type(exc).__name__)
            return
        if not entries:
            return
        try:
            self.store.add_many(entries)
        except Exception as exc:  # noqa: BLE001 - see above
            if not self._failed:
                log.error(
                    "record: could not write %d recent event(s) for the console: %s",
                    len(entries),
                    getattr(exc, "strerror", None) or type(exc).__name__,
                )
            self._failed = True
        else:
            self._failed = False

    def close(self) -> None:
        self.flush()

    def _written(self, built: list[_Parts]) -> list[Recorded]:
        """The batch's entries as a store keeps them: serialised, then masked, in one pass each for the batch.

        The entries are written by one orjson call, a line feed between each
        two (orjson writes none in its text: it splits back there exactly),
        and masked as that one text
        (:meth:`~engine.redaction.Redactor.redact_json`, one search per secret
        form). When a mask took a line feed (a secret holding one, spanning
        two texts) each text is masked on its own instead; when the batch
        cannot be written at once (a value orjson refuses), each entry is
        written on its own and one that cannot be is left out, logged.
        An entry is kept as one text (its summary empty: read back from it).
        """
        text = _batch_text(built)
        if text is None:
            kept, texts = [], []
            for parts in built:
                one = _batch_text([parts])
                if one is None:
                    record = parts[1]["outcome_record"]  # a dict, or the printed line (a fragment)
                    index = (record if type(record) is dict else orjson.loads(orjson.dumps(record))).get("index")
                    log.warning("record: could not record event %s: it cannot be written as JSON", index)
                    continue
                kept.append(parts)
                texts += _split(one)
            built = kept
        else:
            texts = _split(text)
        masked_texts = None
        too_long = EVENT_CAP + RESPONSE_BODY_CAP + 8192
        for i, (_, entry) in enumerate(built) if max(map(len, texts), default=0) > too_long else ():
            incoming = entry.get("incoming")
            if incoming is not None and len(texts[i]) > too_long:
                entry["incoming"] = _bounded_event(incoming)
                texts[i] = _json(entry)
                text = None  # no longer the batch's text
        if text is not None:
            masked = self.redactor.redact_json(text)
            if masked is text:  # no secret anywhere: nearly always
                return [_new_recorded((*c, "", t)) for (c, _), t in zip(built, texts, strict=True)]
            masked_texts = _split(masked)
        if masked_texts is None or len(masked_texts) != len(texts):
            masked_texts = [self.redactor.redact_json(text) for text in texts]
        mask = self.redactor.redact_json
        entries = []
        for (columns, _), entry_text, masked_text in zip(built, texts, masked_texts, strict=True):
            if masked_text != entry_text:
                # The search columns are values of the summary: masked when its text held a secret.
                integration, at, outcome, reason, email, user_id, message_id = columns
                columns = (
                    integration,
                    at,
                    outcome,
                    reason,
                    mask(email).lower() if email else "",
                    mask(user_id).lower() if user_id else "",
                    mask(message_id).lower() if message_id else "",
                )
            entries.append(_new_recorded((*columns, "", masked_text)))
        return entries

    def _parts(
        self,
        at: float,
        incoming: dict[str, Any] | None,
        outcome: Outcome,
        latency_seconds: float | None,
        replay: bool,
        traits: Mapping[str, Any] | None,
        trail: Trail | None,
    ) -> _Parts:
        """One entry's search columns (lower-cased) and the entry, its summary's fields first: NOT masked, NOT serialised."""
        # The outcome's line as the command printed it, when it did (``run``): the same value as to_dict(), written
        # already, so kept as those characters while the response body is kept whole (masked with the batch).
        printed = outcome.printed
        result: dict[str, Any] | None = None if printed is not None else outcome.to_dict()
        response = outcome.response
        status = body = None
        size = None  # the response body's length as JSON when the entry keeps it whole: its line can omit it
        if type(response) is dict:
            status = response.get("status")
            body = response.get("body")
            if body is not None:
                kept: Any = None
                if type(body) is dict or type(body) is list:  # most: serialised here, inline (once per entry)
                    try:
                        serialised = orjson.dumps(body)
                    except TypeError:  # orjson.JSONEncodeError included: the careful road below
                        pass
                    else:
                        if len(serialised) <= RESPONSE_BODY_CAP:  # bytes: at least as many as characters
                            kept, size = orjson.Fragment(serialised), len(serialised)
                if kept is None:
                    kept, size = _kept_response_body(body)
                if size is None and result is None:  # cut: the printed line holds it whole
                    result = outcome.to_dict()
                if result is not None:
                    result["response"] = {**response, "body": kept}
        lines: list[dict[str, Any]] | None = (
            trail.unmasked_lines(None if size is None else (body, size)) if trail else outcome.exchanges
        )
        token_requests = answers_429 = 0
        if lines:
            for line in lines:
                token_requests += line.get("step") == "token"
                answers_429 += line.get("status") == 429
            last = lines[-1]
            last_body = last.get("body")
            if size is not None and last_body is not None and (last_body is body or last_body == body):
                # Kept once, with the outcome (whole() puts it back); a trail's lines are this entry's own.
                if trail is None:
                    last = {k: v for k, v in last.items() if k != "body"}
                    lines = [*lines[:-1], last]
                else:
                    del last["body"]
                last[_BODY_IS_RESPONSE] = True
        user_id = kind = name = None
        if incoming is not None:
            kind, name, user_id = (
                incoming.get("type"),
                incoming.get("event") or incoming.get("name"),
                incoming.get("userId"),
            )
            if type(kind) is not str:
                kind = _text(kind)
            if type(name) is not str:
                name = _text(name)
            if type(user_id) is not str:
                user_id = _text(user_id)
        email = traits.get("email") if traits else None
        if type(email) is not str:
            email = _email_of(None, incoming)
        message_id = outcome.message_id
        # One dict, the summary's fields first: the whole entry is one text, its summary read back from it.
        entry: dict[str, Any] = {
            "at": at,
            "integration": self.integration,
            "preset": self.preset,
            "messageId": message_id,
            "type": kind,
            "event": name,
            "email": email,
            "userId": user_id,
            "outcome": outcome.outcome,
            "reason": outcome.reason,
            "cause": outcome.cause,
            "status": status,
            "attempts": outcome.attempts,
            "latency_ms": round(latency_seconds * 1_000_000) / 1000 if latency_seconds is not None else None,
            "replay": replay,
            "token_requests": token_requests,
            "answers_429": answers_429,
            # A drop's details are its event and its outcome line: nothing else is kept for it.
            "preset_path": self.preset_path,
            "incoming": incoming,
            # result is None only when printed is set
            "outcome_record": orjson.Fragment(printed) if result is None else result,  # type: ignore[arg-type]
        }
        if traits:
            entry["traits"] = traits if type(traits) is dict else dict(traits)
        if lines:
            entry["exchanges"] = lines
        columns = (
            self.integration,
            float(at),
            outcome.outcome,
            outcome.reason or outcome.cause or "",
            email.lower() if email is not None else "",
            user_id.lower() if user_id is not None else "",
            message_id.lower() if type(message_id) is str else "",
        )
        return columns, entry

    def _earlier_event(self, message_id: str) -> dict[str, Any] | None:
        """A replayed letter holds the request, not the event: the event its first outcome recorded, if still kept."""
        self.flush()
        try:
            for row in self.store.recent(RecordQuery(self.integration, search=message_id, limit=20)):
                if row.get("messageId") == message_id:
                    entry = self.store.get(str(row["id"]))
                    if entry and isinstance(entry.get("incoming"), dict):
                        return entry["incoming"]
        except Exception:  # noqa: BLE001 - only the event's details are missing then
            return None
        return None


# What note() keeps until the flush: when, the incoming event, the outcome, the latency, a replay?, the traits,
# the trail of its requests (raw: private to the recorder).
_Noted = tuple[float, dict[str, Any] | None, Outcome, float | None, bool, Mapping[str, Any] | None, Trail | None]
# An entry before it is serialised: its search columns (email, userId and messageId lower-cased), the entry.
_Parts = tuple[tuple[str, float, str | None, str | None, str | None, str | None, str | None], dict[str, Any]]
_SEPARATING = orjson.Fragment(b"\n")
_new_recorded: Callable[[tuple[Any, ...]], Recorded] = functools.partial(tuple.__new__, Recorded)  # no Python call


def _batch_text(built: list[_Parts]) -> str | None:
    """Every entry of ``built``, in order, written by one orjson call (None: orjson refused).

    A line feed (a fragment: orjson writes none itself) follows each text, so :func:`_split` finds them exactly.
    """
    items: list[Any] = []
    for _, entry in built:
        items += (entry, _SEPARATING)
    try:
        return _json(items)
    except (TypeError, ValueError):
        return None


def _split(text: str) -> list[str]:
    """The texts of :func:`_batch_text`'s ``[t1,\\n,t2,\\n,...,\\n]``, by one split in C.

    orjson writes no line feed of its own (it escapes one in a string), so
    ``,\\n,`` is found only between two texts.
    """
    return text[1:-3].split(",\n,") if len(text) > 3 else []


def _kept_response_body(body: Any) -> tuple[Any, int | None]:
    """The response body as the entry keeps it (serialised once: an orjson fragment), and its length as JSON.

    A body over :data:`RESPONSE_BODY_CAP` characters is cut (and its length ``None``).
    """
    if isinstance(body, str):
        return (body, len(body) + 2) if len(body) <= RESPONSE_BODY_CAP else (_cut(body), None)
    text = _json_bytes(body)
    if len(text) > RESPONSE_BODY_CAP:  # bytes: at least as many as characters
        chars = text.decode()
        if len(chars) > RESPONSE_BODY_CAP:
            return _cut(chars), None
    return orjson.Fragment(text), len(text)


def _cut(text: str) -> str:
    return text[:RESPONSE_BODY_CAP] + f"… ({len(text) - RESPONSE_BODY_CAP} more characters not kept)"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else (str(value) if isinstance(value, (int, float)) else None)


def _email_of(traits: Mapping[str, Any] | None, event: Mapping[str, Any] | None) -> str | None:
    """The email the pipeline resolved (it may come from an earlier identify), else the one the event carries."""
    if traits and isinstance(traits.get("email"), str):
        return traits["email"]
    if event is None:
        return None
    context = event.get("context")
    for holder in (
        event.get("traits"),
        context.get("traits") if isinstance(context, dict) else None,
        event.get("properties"),
    ):
        if isinstance(holder, dict) and isinstance(holder.get("email"), str):
            return holder["email"]
    return None


def _bounded_event(event: dict[str, Any]) -> dict[str, Any]:
    text = _json(event)
    if len(text) <= EVENT_CAP:
        return event
    kept: dict[str, Any] = {
        k: event[k] for k in ("type", "event", "messageId", "userId", "anonymousId", "timestamp") if k in event
    }
    return {**kept, "_truncated": f"the event was {len(text)} characters; only its identifying fields are kept"}


class MemoryRecord:
    """The record in memory: for an engine without a state directory, and for tests."""

    def __init__(self, limits: RecordLimits = RecordLimits(), *, clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self._entries: list[tuple[str, Recorded]] = []
        self._next = 1

    def add_many(self, entries: Sequence[Recorded]) -> None:
        for entry in entries:
            self._entries.append((str(self._next), entry))
            self._next += 1
        oldest = self._clock() - self.limits.max_age_seconds
        counts: dict[str, int] = {}
        kept = []
        for entry_id, entry in reversed(self._entries):
            counts[entry.integration] = counts.get(entry.integration, 0) + 1
            if counts[entry.integration] <= self.limits.per_integration and entry.at >= oldest:
                kept.append((entry_id, entry))
        self._entries = kept[::-1]

    def recent(self, query: RecordQuery) -> list[dict[str, Any]]:
        return iter_matching((e.summary_row(i) for i, e in reversed(self._entries)), query)

    def get(self, entry_id: str) -> dict[str, Any] | None:
        return next((e.full(i) for i, e in self._entries if i == entry_id), None)

    def since(self, cursor: str | None) -> tuple[list[dict[str, Any]], str]:
        last = int(cursor) if cursor and cursor.isdigit() else None
        if last is None:
            return [], str(self._next - 1)
        return [e.summary_row(i) for i, e in self._entries if int(i) > last], str(self._next - 1)

    def window(self, since: float) -> list[dict[str, Any]]:
        return [e.summary_row(i) for i, e in self._entries if e.at >= since]

    def integrations(self) -> list[str]:
        return sorted({e.integration for _, e in self._entries})


_Row = TypeVar("_Row", bound=Mapping[str, Any])


def iter_matching(rows: Iterable[_Row], query: RecordQuery) -> list[_Row]:
    out: list[_Row] = []
    for row in rows:
        if query.matches(row):
            out.append(row)
            if len(out) >= query.limit:
                break
    return out
