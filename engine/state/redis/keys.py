"""Where each store keeps its data in Redis: one prefix, then the preset, then the store.

Ids, event keys and user ids never appear in a key as they are: a digest
stands for them, so a huge or personal id makes neither a huge key nor a
readable one.
"""

from __future__ import annotations

import hashlib

DEFAULT_PREFIX = "signal"
GROUP = "workers"  # the consumer group every worker of a preset joins


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def decoded(reply: bytes | str) -> str:
    """A key or field read back as text: the clients leave decode_responses off, so it is bytes (the stubs
    allow str as well, as they must for every client)."""
    return reply.decode() if isinstance(reply, bytes) else reply


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def events(self, preset: str | None = None) -> str:
        """The stream of events: one for an intake and its integrations (the old one-preset form: the preset's)."""
        return f"{self.prefix}:{preset}:events" if preset else f"{self.prefix}:events"

    def outcomes(self, preset: str) -> str:
        return f"{self.prefix}:{preset}:outcomes"

    def journal(self, preset: str, key: str) -> str:
        return f"{self.prefix}:{preset}:journal:{digest(key)}"

    def in_flight(self, preset: str, key: str) -> str:
        return f"{self.prefix}:{preset}:sending:{digest(key)}"

    def identity(self, preset: str, kind: str, ident: str) -> str:
        return f"{self.prefix}:{preset}:id:{digest(kind + chr(0) + ident)}"

    def identity_seen(self, preset: str) -> str:
        return f"{self.prefix}:{preset}:id-seen"

    def identity_bytes(self, preset: str) -> str:
        return f"{self.prefix}:{preset}:id-bytes"

    def letters(self) -> str:
        return f"{self.prefix}:dlq:letters"

    def letter_order(self) -> str:
        return f"{self.prefix}:dlq:order"

    def letter_keys(self) -> str:
        return f"{self.prefix}:dlq:keys"

    def tokens(self, chain: str) -> str:
        return f"{self.prefix}:tokens:{chain}"

    def token_lock(self, client: str) -> str:
        return f"{self.prefix}:tokens:{client}:lock"

    def rate(self, name: str) -> str:
        return f"{self.prefix}:rate:{name}"

    def record(self, integration: str) -> str:
        return f"{self.prefix}:record:{integration}"

    def record_names(self) -> str:
        return f"{self.prefix}:record-names"
