"""The events both the engine and the hand-written floor are measured on.

(a) drop path: 70% anonymous page views, 30% unmapped track events
    (e-commerce and product events), each with a realistic ``context``;
(b) lead path: identified, consenting lead events (all four mapped names,
    all three consent shapes, 6 people in 5 countries) carrying their traits.

Deterministic: the same N gives the same events, so runs compare.
"""

from __future__ import annotations

from typing import Any

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
_CITIES = {
    "GB": ("London", None),
    "US": ("Austin", "TX"),
    "NG": ("Lagos", None),
    "DE": ("Berlin", None),
    "FR": ("Paris", None),
}


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
        base = {
            "messageId": f"drop-{i:06d}",
            "timestamp": "2024-05-14T09:12:03.114Z",
            "anonymousId": f"anon-{i % 997:04d}",
        }
        if i % 10 < 7:
            event = {
                **base,
                "type": "page",
                "name": path,
                "properties": {"path": path},
                "context": _context(i, path, {"canonical": {"marketing": i % 3 != 0}}),
            }
        else:
            event = {
                **base,
                "type": "track",
                "event": _UNMAPPED[i % len(_UNMAPPED)],
                "properties": {"product_id": f"sku-{i % 50}", "price": 49.0, "currency": "GBP"},
                "context": _context(i, path, {"canonical": {"marketing": True}}),
            }
            if i % 2:
                event["userId"] = f"user-{i % 5000}"
        events.append(event)
    return events


def lead_events(n: int) -> list[dict[str, Any]]:
    """Identified, consenting lead events carrying their traits, in all three consent shapes."""
    events = []
    for i in range(n):
        first, last, company, title, phone, country = _PEOPLE[i % len(_PEOPLE)]
        traits: dict[str, Any] = {
            "email": f"  {first}.{last}{i}@{company.split()[0]}.Example.com ",
            "firstName": first,
            "lastName": last,
            "company": company,
            "title": title,
            "phone": phone,
        }
        if country:
            city, state = _CITIES[country]
            traits.update({"city": city, "country": country})
            if state:
                traits["state"] = state
        shape = i % 5
        consent = (
            {"marketing": True, "analytics": True}
            if shape == 3
            else {"categories": ["necessary", "marketing"]}
            if shape == 4
            else {"canonical": {"marketing": True, "analytics": True}}
        )
        events.append(
            {
                "messageId": f"lead-{i:06d}",
                "timestamp": "2024-05-14T09:14:02.305Z",
                "type": "track",
                "event": _LEADS[i % len(_LEADS)],
                "userId": f"user-{i}",
                "anonymousId": f"anon-{i:06d}",
                "properties": {"form": "demo"},
                "traits": traits,
                "context": _context(i, "/demo", consent),
            }
        )
    return events
