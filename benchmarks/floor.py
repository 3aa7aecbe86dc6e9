"""The floor: what a person would write by hand for this one destination, and nothing more.

It reads the same newline-delimited JSON events and prints the same outcome
lines as ``signal-engine run outreach/lead-capture --dry-run`` (the
benchmark checks that they parse to the same values), doing the same
filter, normalise and map work: event shape checks, the event-name table,
the consent gate in its three shapes, the trait merge, the email and E.164
phone normalisers, the prospect document with empty values left out and
strings cut to the schema's maxLength. It does not validate the document
against a schema, keeps no state beyond the run, and has no error
reporting beyond the outcome line.

    python benchmarks/floor.py EVENTS_FILE            # outcome lines on stdout

It imports only what such a script would: json, re, sys and phonenumbers.
"""

from __future__ import annotations

import json
import re
import sys

import phonenumbers

BASE_URL = "https://api.outreach.io"
URL = f"{BASE_URL}/api/v2/prospects"
HEADERS = {
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
    "Authorization": "Bearer ***",
}
EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
TAGS = {"Lead Submitted": "lead", "Form Submitted": "form", "Signed Up": "signup", "Demo Requested": "demo-request"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
TRAITS = ("email", "firstName", "lastName", "name", "phone", "title", "company", "city", "state", "country")
MAX_LENGTH = {
    "firstName": 255,
    "lastName": 255,
    "title": 255,
    "occupation": 255,
    "addressCity": 255,
    "addressState": 255,
    "addressCountry": 255,
}


def text(value):
    if value is None or value is True or value is False:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    return value.strip() or None


def e164(value, country):
    raw = text(value)
    if raw is None:
        return None
    country = text(country)
    region = country.upper() if country and len(country) == 2 and country.isalpha() else None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def consent_missing(event):
    context = event.get("context")
    consent = context.get("consent") if isinstance(context, dict) else None
    if not isinstance(consent, dict):
        return True
    canonical = consent.get("canonical")
    if isinstance(canonical, dict):
        return canonical.get("marketing") is not True
    if consent.get("marketing") is True:
        return False
    codes = consent.get("categories")
    return not (isinstance(codes, list) and any(isinstance(c, str) and c.lower() == "marketing" for c in codes))


def message_id(event):
    value = event.get("messageId") if isinstance(event, dict) else None
    return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def shape_ok(event):
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        return False
    if event["type"] == "track" and not (isinstance(event.get("event"), str) and event["event"].strip()):
        return False
    for field in ("traits", "properties", "context"):
        if event.get(field) is not None and not isinstance(event[field], dict):
            return False
    context = event.get("context")
    if isinstance(context, dict):
        for field in ("traits", "consent"):
            if context.get(field) is not None and not isinstance(context[field], dict):
                return False
    for field in ("userId", "anonymousId", "messageId"):
        value = event.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            return False
    return True


def dropped(index, mid, reason, detail):
    return {"index": index, "messageId": mid, "outcome": "dropped", "reason": reason, "detail": detail}


def outcome(index, event, memory):
    mid = message_id(event)
    if not shape_ok(event):
        return dropped(index, mid, "invalid_event", "malformed event")
    kind = event["type"]
    if kind == "identify":
        for key in ("userId", "anonymousId"):
            if event.get(key) is not None:
                memory.setdefault(str(event[key]), {}).update(event.get("traits") or {})
        return dropped(
            index,
            mid,
            "event_not_mapped",
            "identify is not mapped; its traits are remembered for this user's later events",
        )
    if kind != "track":
        return dropped(index, mid, "event_not_mapped", f"{kind} events are not mapped (defaults.action: drop)")
    tag = TAGS.get(event["event"])
    if tag is None:
        return dropped(
            index,
            mid,
            "event_not_mapped",
            f"track event {event['event']!r} is not in the preset's event table (defaults.action: drop)",
        )
    if consent_missing(event):
        return dropped(index, mid, "no_consent", "consent not granted for: marketing")

    raw = {}
    for key in ("anonymousId", "userId"):
        if event.get(key) is not None:
            raw.update(memory.get(str(event[key]), {}))
    for layer in ((event.get("context") or {}).get("traits"), event.get("traits")):
        if layer:
            raw.update((k, v) for k, v in layer.items() if v is not None and not (isinstance(v, str) and not v.strip()))
    email = raw.get("email")
    if not isinstance(email, str) or not email.strip():
        return dropped(index, mid, "not_identified", "no 'email' trait on the event or remembered for its user")
    email = email.strip().lower()
    if not EMAIL.match(email):
        return dropped(index, mid, "invalid_email", f"trait 'email': not an email address: {email[:80]!r}")

    first, last, name = text(raw.get("firstName")), text(raw.get("lastName")), text(raw.get("name"))
    title, company = text(raw.get("title")), text(raw.get("company"))
    city, state, country = text(raw.get("city")), text(raw.get("state")), text(raw.get("country"))
    phone = e164(raw.get("phone"), raw.get("country"))
    attributes = {"emails": [email]}
    for key, value in (
        ("firstName", first),
        ("lastName", last),
        ("name", name or " ".join(x for x in (first, last) if x)),
        ("title", title),
        ("occupation", title),
        ("company", company),
    ):
        if value:
            attributes[key] = value
    if phone:
        attributes["mobilePhones"] = [phone]
    for key, value in (("addressCity", city), ("addressState", state), ("addressCountry", country)):
        if value:
            attributes[key] = value
    attributes["tags"] = ["Signal", tag]
    for key, limit in MAX_LENGTH.items():
        if key in attributes and len(attributes[key]) > limit:
            attributes[key] = attributes[key][:limit]
    body = {"data": {"type": "prospect", "attributes": attributes}}
    return {
        "index": index,
        "messageId": mid,
        "outcome": "would_send",
        "request": {"method": "POST", "url": URL, "headers": dict(HEADERS), "body": body},
    }


def main(argv):
    memory = {}
    write = sys.stdout.write
    with open(argv[1], "rb") as lines:
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                result = dropped(index, None, "invalid_event", f"line {index + 1}: not valid JSON")
            else:
                result = outcome(index, event, memory)
            write(json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
