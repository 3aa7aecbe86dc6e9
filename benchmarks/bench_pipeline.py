"""Per-event CPU cost of ``Pipeline.prepare`` against a hand-written baseline.

Two paths, each timed for the engine and for a pure-Python function that
does the same work, in the same run:

(a) drop path: anonymous page views and unmapped track events
    (event-shape check, event-table lookup, consent check never reached);
(b) full path: identified, consenting lead events through filter,
    trait normalisation, the JSONata mapping, truncation and
    output-schema validation.

Each measurement loops over many events and is repeated; the median is
reported. Timings are not asserted anywhere: the machine is shared and
noisy, so only the ratios of one run are meaningful.

    .venv/bin/python benchmarks/bench_pipeline.py [--events N] [--repeat K]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import statistics
import sys
import time
from typing import Any, Callable

import phonenumbers
from jsonschema import Draft202012Validator

from engine.language import resources
from engine.pipeline.prepare import Pipeline, Prepared
from engine.language.compiler import load_preset
from engine.language.settings import resolve

PRESET = "outreach/lead-capture"

# --------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------

_UAS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
)
_PATHS = ("/", "/pricing", "/blog/outbound-playbook", "/customers", "/docs/getting-started", "/demo")
_UNMAPPED = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Report Exported")
_LEADS = ("Lead Submitted", "Form Submitted", "Signed Up", "Demo Requested")
# (first, last, company, title, phone as typed on a form, country)
_PEOPLE = (
    ("Jane", "Doe", "Acme Inc", "Head of Growth", "+44 7700 900123", None),
    ("Marcus", "Lee", "Northwind Traders", "VP Sales", "020 7946 0958", "GB"),
    ("Priya", "Shah", "Globex", "Revenue Operations Manager", "(512) 555-0147", "US"),
    ("Amara", "Okafor", "Umbrella Logistics", "Sales Director", "+234 802 123 4567", "NG"),
    ("Lukas", "Weber", "Initech GmbH", "Leiter Vertrieb", "030 901820", "DE"),
    ("Chloé", "Martin", "Vandelay SAS", "Directrice marketing", "01 23 45 67 89", "FR"),
)
_CITIES = {"GB": ("London", None), "US": ("Austin", "TX"), "NG": ("Lagos", None), "DE": ("Berlin", None),
           "FR": ("Paris", None)}


def _context(i: int, path: str, consent: dict[str, Any] | None) -> dict[str, Any]:
    context: dict[str, Any] = {
        "page": {"path": path, "url": f"https://www.example-saas.com{path}", "title": path.strip("/") or "Home"},
        "userAgent": _UAS[i % len(_UAS)],
        "locale": "en-GB",
    }
    if consent is not None:
        context["consent"] = consent
    return context


def drop_events(n: int) -> list[dict[str, Any]]:
    """Mostly anonymous page views, some unmapped (e-commerce / product) track events."""
    events = []
    for i in range(n):
        path = _PATHS[i % len(_PATHS)]
        base = {"messageId": f"drop-{i:06d}", "timestamp": "2024-05-14T09:12:03.114Z",
                "anonymousId": f"anon-{i % 997:04d}"}
        if i % 10 < 7:
            event = {**base, "type": "page", "name": path, "properties": {"path": path},
                     "context": _context(i, path, {"canonical": {"marketing": i % 3 != 0}})}
        else:
            event = {**base, "type": "track", "event": _UNMAPPED[i % len(_UNMAPPED)],
                     "properties": {"product_id": f"sku-{i % 50}", "price": 49.0, "currency": "GBP"},
                     "context": _context(i, path, {"canonical": {"marketing": True}})}
            if i % 2:
                event["userId"] = f"user-{i % 5000}"
        events.append(event)
    return events


def full_events(n: int) -> list[dict[str, Any]]:
    """Identified, consenting lead events carrying their traits, in all three consent shapes."""
    events = []
    for i in range(n):
        first, last, company, title, phone, country = _PEOPLE[i % len(_PEOPLE)]
        traits: dict[str, Any] = {
            "email": f"  {first}.{last}{i}@{company.split()[0]}.Example.com ",
            "firstName": first, "lastName": last, "company": company, "title": title, "phone": phone,
        }
        if country:
            city, state = _CITIES[country]
            traits.update({"city": city, "country": country})
            if state:
                traits["state"] = state
        shape = i % 5
        consent = ({"marketing": True, "analytics": True} if shape == 3
                   else {"categories": ["necessary", "marketing"]} if shape == 4
                   else {"canonical": {"marketing": True, "analytics": True}})
        events.append({
            "messageId": f"lead-{i:06d}", "timestamp": "2024-05-14T09:14:02.305Z", "type": "track",
            "event": _LEADS[i % len(_LEADS)], "userId": f"user-{i}", "anonymousId": f"anon-{i:06d}",
            "properties": {"form": "demo"}, "traits": traits, "context": _context(i, "/demo", consent),
        })
    return events


# --------------------------------------------------------------------------
# The hand-written baseline: the same decisions and the same document, no engine
# --------------------------------------------------------------------------

_EVENT_TYPES = frozenset(("identify", "track", "page", "screen", "group", "alias"))
_TAGS = {"Lead Submitted": "lead", "Form Submitted": "form", "Signed Up": "signup", "Demo Requested": "demo-request"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
_HEADERS = {"Content-Type": "application/vnd.api+json", "Accept": "application/vnd.api+json"}


class Baseline:
    """What a person would write by hand for this one destination."""

    def __init__(self, base_url: str, schema: dict[str, Any]) -> None:
        self.url = f"{base_url}/api/v2/prospects"
        self.validator = Draft202012Validator(schema)
        attributes = schema["properties"]["data"]["properties"]["attributes"]["properties"]
        self.limits = {k: v["maxLength"] for k, v in attributes.items() if "maxLength" in v}
        self.memory: dict[str, dict[str, Any]] = {}  # identify traits by id (empty here)

    @staticmethod
    def shape_ok(event: Any) -> bool:
        if type(event) is not dict:
            return False
        kind = event.get("type")
        if kind not in _EVENT_TYPES:
            return False
        if kind == "track":
            name = event.get("event")
            if type(name) is not str or not name.strip():
                return False
        for field in ("traits", "properties", "context"):
            value = event.get(field)
            if value is not None and type(value) is not dict:
                return False
        context = event.get("context")
        if context:
            for field in ("traits", "consent"):
                value = context.get(field)
                if value is not None and type(value) is not dict:
                    return False
        for field in ("userId", "anonymousId", "messageId"):
            value = event.get(field)
            if value is not None and (type(value) is bool or not isinstance(value, (str, int))):
                return False
        return True

    @staticmethod
    def consented(event: dict[str, Any]) -> bool:
        context = event.get("context")
        consent = context.get("consent") if context else None
        if not consent:
            return False
        canonical = consent.get("canonical")
        if type(canonical) is dict:
            return canonical.get("marketing") is True
        if consent.get("marketing") is True:
            return True
        codes = consent.get("categories")
        return type(codes) is list and any(type(c) is str and c.lower() == "marketing" for c in codes)

    def prepare(self, event: Any) -> tuple[str, Any]:
        """("dropped", reason) or ("send", (url, headers, body))."""
        if not self.shape_ok(event):
            return "dropped", "invalid_event"
        tag = _TAGS.get(event.get("event")) if event["type"] == "track" else None
        if tag is None:
            return "dropped", "event_not_mapped"
        if not self.consented(event):
            return "dropped", "no_consent"

        raw: dict[str, Any] = {}
        for key in ("anonymousId", "userId"):
            remembered = self.memory.get(event.get(key))
            if remembered:
                raw.update(remembered)
        context_traits = event["context"].get("traits")
        if context_traits:
            raw.update(context_traits)
        if event.get("traits"):
            raw.update(event["traits"])

        email = raw.get("email")
        if not isinstance(email, str) or not email.strip():
            return "dropped", "not_identified"
        email = email.strip().lower()
        if not _EMAIL.match(email):
            return "dropped", "invalid_email"

        first, last, name = _text(raw.get("firstName")), _text(raw.get("lastName")), _text(raw.get("name"))
        title, company = _text(raw.get("title")), _text(raw.get("company"))
        city, state, country = _text(raw.get("city")), _text(raw.get("state")), _text(raw.get("country"))
        phone = _e164(raw.get("phone"), country)
        if not name:
            name = " ".join(x for x in (first, last) if x)

        attributes: dict[str, Any] = {"emails": [email]}
        for key, value in (("firstName", first), ("lastName", last), ("name", name), ("title", title),
                           ("occupation", title), ("company", company)):
            if value:
                attributes[key] = value
        if phone:
            attributes["mobilePhones"] = [phone]
        for key, value in (("addressCity", city), ("addressState", state), ("addressCountry", country)):
            if value:
                attributes[key] = value
        attributes["tags"] = ["Signal", tag]
        limits = self.limits
        for key, value in attributes.items():
            limit = limits.get(key)
            if limit is not None and len(value) > limit:
                attributes[key] = value[:limit]
        body = {"data": {"type": "prospect", "attributes": attributes}}
        if not self.validator.is_valid(body):
            return "failed", "output_invalid"
        return "send", (self.url, dict(_HEADERS), body)


def _text(value: Any) -> str | None:
    if type(value) is str:
        return value.strip() or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _e164(value: Any, country: str | None) -> str | None:
    raw = _text(value)
    if raw is None:
        return None
    region = country.upper() if country and len(country) == 2 and country.isalpha() else None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------

def _run(fn: Callable[[Any], Any], events: list[dict[str, Any]]) -> tuple[int, int]:
    """(CPU ns, wall ns) for one pass over ``events``."""
    gc.collect()
    cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
    for event in events:
        fn(event)
    return time.process_time_ns() - cpu0, time.perf_counter_ns() - wall0


def _check_equivalence(pipeline: Pipeline, baseline: Baseline, drops: list[dict[str, Any]],
                       leads: list[dict[str, Any]]) -> None:
    """Outside timing: both sides decide the same and build the same document."""
    for event in drops[:200]:
        engine = pipeline.prepare(event)
        assert not isinstance(engine, Prepared), event
        assert baseline.prepare(event) == ("dropped", engine.reason), (event, engine)
    for event in leads[:200]:
        engine = pipeline.prepare(event)
        assert isinstance(engine, Prepared), (event, engine)
        kind, (url, headers, body) = baseline.prepare(event)
        assert kind == "send"
        assert body == engine.body, (body, engine.body)
        assert (url, headers) == (engine.url, engine.headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, metavar="N", help="events per pass (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, metavar="K", help="passes per measurement; median reported (default 5)")
    parser.add_argument("--json", action="store_true", help="also print the raw medians as one JSON line")
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be at least 1")

    preset = load_preset(PRESET)
    settings = resolve(preset.settings, {"client_id": "bench", "client_secret": "bench-secret",
                                         "refresh_token": "bench-refresh"}, require=True)
    pipeline = Pipeline(preset, settings)
    schema = json.loads(resources.output_schema_path("outreach/prospect-request").read_text(encoding="utf-8"))
    baseline = Baseline(settings["base_url"], schema)

    drops, leads = drop_events(args.events), full_events(args.events)

    # The sample event from the product page's "Example: Demo Requested", with
    # its identify traits on the event: both sides must build the same document.
    sample = {"type": "track", "event": "Demo Requested", "userId": "user-123", "messageId": "msg-sample",
              "traits": {"email": "jane.doe@acme.com", "firstName": "Jane", "lastName": "Doe", "company": "Acme Inc",
                         "title": "Head of Growth", "phone": "+44 7700 900123"},
              "context": {"consent": {"canonical": {"marketing": True}}}}
    prepared = pipeline.prepare(sample)
    assert isinstance(prepared, Prepared), prepared
    assert baseline.prepare(sample) == ("send", (prepared.url, prepared.headers, prepared.body))
    _check_equivalence(pipeline, baseline, drops, leads)

    # Warm up (phonenumbers loads region metadata lazily, caches fill).
    for fn in (pipeline.prepare, baseline.prepare):
        for event in drops[:500] + leads[:300]:
            fn(event)

    cases = {("drop", "engine"): (pipeline.prepare, drops), ("drop", "baseline"): (baseline.prepare, drops),
             ("full", "engine"): (pipeline.prepare, leads), ("full", "baseline"): (baseline.prepare, leads)}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    wall: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
    for _ in range(args.repeat):
        # Interleaved so that engine and baseline share the same machine noise.
        for key, (fn, events) in cases.items():
            c, w = _run(fn, events)
            cpu[key].append(c / len(events) / 1000)
            wall[key].append(w / len(events) / 1000)
    med = {key: statistics.median(v) for key, v in cpu.items()}
    med_wall = {key: statistics.median(v) for key, v in wall.items()}

    print(f"signal-engine pipeline benchmark: {PRESET}")
    print(f"python {platform.python_version()} on {platform.machine()}, {args.events} events per pass, "
          f"median of {args.repeat} passes, CPU time (time.process_time_ns) per event")
    print()
    print(f"| {'path':<38} | {'engine µs/event':>15} | {'baseline µs/event':>17} | {'engine/baseline':>15} |")
    print(f"|{'-' * 40}|{'-' * 16}:|{'-' * 18}:|{'-' * 16}:|")
    labels = {"drop": "(a) drop: page views + unmapped track",
              "full": "(b) full: lead → prospect document"}
    for path in ("drop", "full"):
        e, b = med[(path, "engine")], med[(path, "baseline")]
        print(f"| {labels[path]:<38} | {e:>15.2f} | {b:>17.2f} | {e / b:>14.1f}x |")
    e_ratio = med[("full", "engine")] / med[("drop", "engine")]
    b_ratio = med[("full", "baseline")] / med[("drop", "baseline")]
    print(f"| {'full/drop ratio':<38} | {e_ratio:>14.0f}x | {b_ratio:>16.0f}x | {'':>15} |")
    print()
    print("wall-clock medians (µs/event, perf_counter_ns): "
          + ", ".join(f"{p}/{impl} {med_wall[(p, impl)]:.2f}" for p, impl in cases))
    if args.json:
        print(json.dumps({f"{p}_{impl}_cpu_us": round(v, 3) for (p, impl), v in med.items()}
                         | {f"{p}_{impl}_wall_us": round(v, 3) for (p, impl), v in med_wall.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
