"""Dead letters in Redis, shared by every worker and by ``dlq list|replay --redis``.

A hash of letters by id, a sorted set giving their order, and a hash from
(preset, event key) to the letter's id, so that a second failure of the same
event replaces its letter (keeping the id), as in every store. Each change
touches one letter and is one transaction. Redis keeps them as durably as it
is configured to (``appendonly yes``; see docs/guides/redis.md, "Durability").
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

from redis import Redis
from redis.exceptions import WatchError

from ..dead_letters import PAGE_SIZE, filed_under
from .errors import reading, writing
from .journal import LetterHints
from .keys import Keys, decoded

MAX_RETRIES = 50

# KEYS: letters. ARGV: id, entry. Replace only a letter that is still there.
UPDATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 0
"""


class RedisDeadLetters:
    def __init__(self, client: Redis, keys: Keys, hints: LetterHints | None = None) -> None:
        self.r = client
        self._hints = hints
        self._letters = keys.letters()
        self._order = keys.letter_order()
        self._keys = keys.letter_keys()
        self._update = client.register_script(UPDATE)

    def add(self, entry: dict[str, Any]) -> None:
        key = entry.get("key")
        index = f"{filed_under(entry)}\0{key}" if key is not None else None
        if index is not None and self._hints is not None:
            self._hints.take(index)  # what the journal learnt about this event's letter is out of date now
        with writing("the dead letters"), self.r.pipeline() as pipe:
            for _ in range(MAX_RETRIES):
                try:
                    if index is not None:
                        pipe.watch(self._keys, self._letters)
                        same = pipe.hget(self._keys, index)
                        if same is not None and pipe.hexists(self._letters, same):
                            same_id = decoded(same)
                            pipe.multi()
                            pipe.hset(self._letters, same_id, _text({**entry, "id": same_id}))
                            pipe.execute()
                            return
                    pipe.multi()
                    letter_id = str(entry.get("id"))
                    pipe.hset(self._letters, letter_id, _text(entry))
                    pipe.zadd(self._order, {letter_id: time.time()})
                    if index is not None:
                        pipe.hset(self._keys, index, letter_id)
                    pipe.execute()
                    return
                except WatchError:
                    continue
            raise WatchError("the dead letters kept changing")

    def entries(self, preset: str | None = None) -> list[dict[str, Any]]:
        with reading("the dead letters"):
            ids = self.r.zrange(self._order, 0, -1)
            # The stubs do not tell ZRANGE's members from ZRANGE WITHSCORES' pairs; these are members.
            texts = self.r.hmget(self._letters, ids) if ids else []  # type: ignore[arg-type]
        letters = [json.loads(text) for text in texts if text is not None]
        return [e for e in letters if preset is None or filed_under(e) == preset]

    def pages(self, preset: str | None = None, size: int = PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
        # The order set sorts by (score, id); page on that pair, up to the newest letter at the start.
        # A page asks for as many more as there were letters already seen at the cursor's score.
        with reading("the dead letters"):
            # redis-py's stubs cannot tell WITHSCORES pairs from plain members.
            newest = cast("list[tuple[bytes, float]]", self.r.zrange(self._order, -1, -1, withscores=True))
        if not newest:
            return
        last_id, last_score = newest[0]
        cursor: tuple[float, bytes] | None = None
        seen_at_score = 0
        while True:
            low = cursor[0] if cursor is not None else "-inf"
            with reading("the dead letters"):
                scored = cast(
                    "list[tuple[bytes, float]]",
                    self.r.zrangebyscore(
                        self._order, low, last_score, start=0, num=size + seen_at_score, withscores=True
                    ),
                )
            fresh = [
                (member, score)
                for member, score in scored
                if (cursor is None or (score, member) > cursor) and (score, member) <= (last_score, last_id)
            ]
            if not fresh:
                return
            with reading("the dead letters"):
                texts = self.r.hmget(self._letters, [member for member, _ in fresh])
            letters = [json.loads(text) for text in texts if text is not None]
            page = [e for e in letters if preset is None or filed_under(e) == preset]
            if page:
                yield page
            end = (fresh[-1][1], fresh[-1][0])
            same = sum(1 for _, score in fresh if score == end[0])
            seen_at_score = same + (seen_at_score if cursor is not None and end[0] == cursor[0] else 0)
            cursor = end

    def count(self, preset: str | None = None) -> int:
        if preset is None:
            return len(self)
        return sum(len(page) for page in self.pages(preset))

    def remove(self, letter_id: str) -> None:
        with writing("the dead letters"):
            text = self.r.hget(self._letters, letter_id)
            pipe = self.r.pipeline()
            pipe.hdel(self._letters, letter_id)
            pipe.zrem(self._order, letter_id)
            if text is not None:
                entry = json.loads(text)
                if entry.get("key") is not None:
                    index = f"{filed_under(entry)}\0{entry.get('key')}"
                    if self.r.hget(self._keys, index) == letter_id.encode():
                        pipe.hdel(self._keys, index)
            pipe.execute()

    def discard(self, preset: str, key: str) -> None:
        """The event was delivered since (a worker sent a re-posted copy): its letter is obsolete.

        The journal looked the letter up as it recorded the delivery, just before (:class:`LetterHints`).
        """
        index = f"{preset}\0{key}"
        known, hinted = self._hints.take(index) if self._hints is not None else (False, None)
        if known:
            letter_id: Any = hinted
        else:
            with reading("the dead letters"):
                letter_id = self.r.hget(self._keys, index)
        if letter_id is not None:
            self.remove(decoded(letter_id))

    def update(self, entry: dict[str, Any]) -> None:
        with writing("the dead letters"):
            self._update(keys=[self._letters], args=[str(entry.get("id")), _text(entry)])

    def __len__(self) -> int:
        with reading("the dead letters"):
            return int(self.r.zcard(self._order))


def _text(entry: dict[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, default=str)
