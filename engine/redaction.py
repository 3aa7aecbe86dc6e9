"""Keeps secrets out of everything a person or a log can see.

Secrets are masked structurally where the engine knows them (the auth
header) and, as a second line of defence, by value: every string that
leaves through an outcome, a log line, a dead letter or an error message
passes through :meth:`Redactor.redact`, which replaces any known secret —
client secret, refresh tokens (old and rotated), access tokens.
"""

from __future__ import annotations

from typing import Any

MASK = "***"


class Redactor:
    """The set of secret strings known to one engine; grows as tokens are minted."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets: set[str] = set()
        # Longest first (a token may contain a shorter secret), and the shortest length: a string
        # shorter than every secret cannot hold one. Recomputed only when a secret is added.
        self._ordered: tuple[str, ...] = ()
        self._shortest = 0
        self._json_forms: tuple[int, list[str]] | None = None  # (secrets counted, their JSON forms), for redact_json
        self._orjson_forms: tuple[bytes, ...] = ()  # each secret as orjson writes it inside a string
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        # Very short values would mask innocent text and are not real credentials.
        if isinstance(secret, str) and len(secret) >= 6 and secret not in self._secrets:
            self._secrets.add(secret)
            self._ordered = tuple(sorted(self._secrets, key=len, reverse=True))
            self._shortest = len(self._ordered[-1])
            self._orjson_forms = tuple(_orjson_form(s) for s in self._ordered)

    def redact(self, value: Any) -> Any:
        if not self._secrets:
            return value
        kind = type(value)
        if (kind is dict or kind is list) and not self._may_hold_secret(value):
            return value
        return self._redact(value)

    def _may_hold_secret(self, value: dict[Any, Any] | list[Any]) -> bool:
        """False only when no string in ``value`` (key or value, at any depth) holds a known secret.

        orjson escapes a string character by character, so a string that
        contains a secret is written with the secret's own escaped form
        inside it: one search of the compact text per secret (in C) instead
        of a Python walk of every string. Values orjson refuses (non-string
        keys, huge integers, lone surrogates) take the walk.
        """
        import orjson  # here, not at the top: a dry run with nothing to mask never loads it (nor uuid, platform)

        try:
            text = orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):
            return True
        return any(form in text for form in self._orjson_forms)

    def _redact(self, value: Any) -> Any:
        # Runs on every outcome of a delivery: exact types first, and only strings
        # long enough to hold a secret are searched.
        kind = type(value)
        if kind is str or (kind is not dict and kind is not list and isinstance(value, str)):
            if len(value) < self._shortest:
                return value
            for secret in self._ordered:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if kind is dict or isinstance(value, dict):
            redact = self._redact
            return {redact(k): redact(v) for k, v in value.items()}
        if kind is list or isinstance(value, list):
            redact = self._redact
            return [redact(v) for v in value]
        return value

    def redact_json(self, text: str) -> str:
        """Mask every known secret in serialized JSON, as written and as JSON escapes it.

        One pass over one string per secret: much cheaper than :meth:`redact`
        on the structure, for what is written on the delivery path (the
        console's record of recent events).
        """
        if not self._secrets or len(text) < self._shortest:
            return text  # escaping only lengthens a secret: a shorter text holds none of its forms
        if self._json_forms is None or self._json_forms[0] != len(self._secrets):
            import json

            forms = {
                form
                for secret in self._secrets
                for form in (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1])
            }
            self._json_forms = (len(self._secrets), sorted(forms, key=len, reverse=True))
        for form in self._json_forms[1]:
            if form in text:
                text = text.replace(form, MASK)
        return text


def _orjson_form(secret: str) -> bytes:
    """The secret as it appears inside a string orjson wrote (escapes included).

    A secret orjson cannot write (a lone surrogate) gets the empty form, which
    every text contains: values are then always walked.
    """
    import orjson

    try:
        return orjson.dumps(secret)[1:-1]
    except orjson.JSONEncodeError:
        return b""
