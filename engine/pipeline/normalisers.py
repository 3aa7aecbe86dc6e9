"""Trait normalisers named in presets (``identity.traits.*.normalise``).

They run on the declared traits only, after the drop decisions, so the
mapping sees clean values and never has to repeat trimming or parsing.
"""

from __future__ import annotations

import re
from typing import Any, Callable

# Deliberately loose: the destination is the authority on deliverability.
# This catches what is clearly not an address (no @, spaces, no dot in the
# domain) so that it is dropped with a reason instead of rejected with a 422.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")


class InvalidValue(ValueError):
    """The value is present but unusable; the message says why."""


def text(value: Any, traits: dict[str, Any] | None = None, option: str | None = None) -> str | None:
    """Trimmed text; numbers become text; empty, boolean and structured values are absent."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    return value.strip() or None


def email(value: Any, traits: dict[str, Any] | None = None, option: str | None = None) -> str | None:
    """Trimmed and lower-cased, because the destination dedupes on the exact string."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidValue(f"email must be a string, got {type(value).__name__}")
    cleaned = value.strip().lower()
    if not _EMAIL.match(cleaned):
        raise InvalidValue(f"not an email address: {cleaned[:80]!r}")
    return cleaned


def phone_e164(value: Any, traits: dict[str, Any] | None = None, option: str | None = None) -> str | None:
    """E.164, with the ``region_from`` trait as the default region for national numbers.

    Only a *possible* number is required, not a *valid* one: valid-number
    metadata rejects reserved ranges such as UK drama numbers, which real
    forms and the product page's own example use.
    An unparseable phone is absent, never fatal: the lead is worth more than the number.
    """
    raw = text(value)
    if raw is None:
        return None
    region = None
    if option and traits:
        candidate = text(traits.get(option))
        if candidate and len(candidate) == 2 and candidate.isalpha():
            region = candidate.upper()
    import phonenumbers  # ~30 ms of imports, paid by the first phone, not by every start

    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


NORMALISERS: dict[str, Callable[[Any, dict[str, Any] | None, str | None], Any]] = {
    "text": text,
    "email": email,
    "phone_e164": phone_e164,
}
