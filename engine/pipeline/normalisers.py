"""Trait normalisers named in presets (``identity.traits.*.normalise``).

They run on the declared traits only, after the drop decisions, so the
mapping sees clean values and never has to repeat trimming or parsing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

# Deliberately loose: the destination is the authority on deliverability.
# This catches what is clearly not an address (no @, spaces, no dot in the
# domain) so that it is dropped with a reason instead of rejected with a 422.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
# RFC 5321: a path holds at most 256 octets, angle brackets included.
MAX_EMAIL_BYTES = 254
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Control, format (zero-width and bidirectional marks), surrogate, private-use and line/paragraph separators:
# characters a person cannot see or that reorder what they see, so two different strings look alike.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
# What trimming removes from an email: spaces, tabs and line breaks, but not the separators
# (U+001C..U+001F, U+0085, U+2028, U+2029) that str.strip() also counts as whitespace.
# Written out rather than computed at import (a millisecond of every start); a test checks it.
_TRIMMED = (
    "\t\n\x0b\x0c\r \xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
)


class InvalidValue(ValueError):
    """The value is present but unusable; the message says why."""


def text(value: Any, traits: dict[str, Any] | None = None, option: str | None = None) -> str | None:
    """Trimmed text; numbers become text; empty and null are absent; booleans and structures are refused."""
    if type(value) is str:  # nearly every call: one test instead of five
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, (bool, dict, list)):
        raise InvalidValue(f"expected text, got {_kind(value)}")
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidValue(f"expected text, got {type(value).__name__}")
    return value.strip() or None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean"}.get(type(value), type(value).__name__)


def email(value: Any, traits: dict[str, Any] | None = None, option: str | None = None) -> str | None:
    """Trimmed and lower-cased, because the destination dedupes on the exact string."""
    if value is None or (isinstance(value, str) and not value.strip(_TRIMMED)):
        return None
    if not isinstance(value, str):
        raise InvalidValue(f"email must be a string, got {type(value).__name__}")
    cleaned = value.strip(_TRIMMED).lower()
    hidden = _hidden_character(cleaned)
    if hidden is not None:
        import unicodedata  # only for a refused address: the message names the character

        name = unicodedata.name(hidden, "")
        shown = f"U+{ord(hidden):04X}" + (f" ({name})" if name else "")
        raise InvalidValue(f"not an email address: it contains {shown}, an invisible or control character")
    size = len(cleaned.encode("utf-8", "surrogatepass"))
    if size > MAX_EMAIL_BYTES:
        raise InvalidValue(f"not an email address: {size} bytes long, over the {MAX_EMAIL_BYTES} an address may have")
    if not _EMAIL.match(cleaned):
        raise InvalidValue(f"not an email address: {cleaned[:80]!r}")
    return cleaned


def _hidden_character(value: str) -> str | None:
    if value.isascii():
        found = _ASCII_CONTROL.search(value)
        return found.group() if found else None
    import unicodedata  # not at start-up: most addresses are ASCII

    for char in value:
        if unicodedata.category(char) in _HIDDEN_CATEGORIES:
            return char
    return None


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
            region = candidate.upper()  # a code: no need to load the country table
        else:
            try:
                region = country(candidate)
            except InvalidValue:
                region = None  # an unknown country only costs the default region
    import phonenumbers  # ~30 ms of imports, paid by the first phone, not by every start

    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE and not raw.startswith("+"):
            raise InvalidValue("a national number with no country to take its country code from") from None
        raise InvalidValue("not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidValue("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# Names people type that ISO 3166 does not list.
_COUNTRY_ALIASES = {
    "uk": "GB",
    "u.k.": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "usa": "US",
    "u.s.a.": "US",
    "u.s.": "US",
    "america": "US",
    "russia": "RU",
    "ivory coast": "CI",
    "south korea": "KR",
    "north korea": "KP",
    "macedonia": "MK",
    "turkey": "TR",
    "holland": "NL",
    "the netherlands": "NL",
    "czech republic": "CZ",
    "vatican": "VA",
    "laos": "LA",
    "syria": "SY",
    "moldova": "MD",
    "palestine": "PS",
    "taiwan": "TW",
    "tanzania": "TZ",
}


def country(value: Any, traits: dict[str, Any] | None = None, option: str | None = None) -> str | None:
    """ISO 3166-1 alpha-2 from a code (``gb``, ``GBR``, ``826``) or a name ("United Kingdom" → ``GB``)."""
    raw = text(value)
    if raw is None:
        return None
    index = _country_index()
    found = index.get(_fold(raw))
    if found is None:
        raise InvalidValue("not a known country (expected an ISO 3166 code or a country name)")
    return found


def _fold(name: str) -> str:
    """Case, accents and spacing do not matter: "Côte d’Ivoire" finds "Cote d'Ivoire"."""
    import unicodedata  # only when a country is looked up by name

    decomposed = unicodedata.normalize("NFKD", name.replace("’", "'"))
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).lower().split())


@lru_cache(maxsize=1)
def _country_index() -> Mapping[str, str]:
    """Every code and name of every country, folded; built once, on first use (pycountry costs ~50 ms to load)."""
    import pycountry

    index: dict[str, str] = {}
    for entry in pycountry.countries:
        for attr in ("alpha_2", "alpha_3", "numeric", "name", "official_name", "common_name"):
            value = getattr(entry, attr, None)
            if value:
                index[_fold(value)] = entry.alpha_2
    index.update(_COUNTRY_ALIASES)
    return index


NORMALISERS: dict[str, Callable[[Any, dict[str, Any] | None, str | None], Any]] = {
    "text": text,
    "email": email,
    "phone_e164": phone_e164,
    "country": country,
}
