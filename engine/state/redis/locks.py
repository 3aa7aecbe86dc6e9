"""Per-event locks across workers: two workers never send the same event at the same time.

The delivery journal stops a repeat *after* a delivery; these stop one
*during* it: when the same event reaches two workers at once (a producer
sent it twice, or a worker was thought dead and its entry claimed while it
was still sending), the second waits for the first to finish, then finds
the first's delivery in the journal. A lock expires on its own if its
holder dies, and is renewed while it is held.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from .wire import Wire, evalsha

# KEYS: the locks. ARGV: owner, milliseconds ('' = delete).
OWNED = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    if ARGV[2] == '' then redis.call('DEL', key) else redis.call('PEXPIRE', key, ARGV[2]) end
    n = n + 1
  end
end
return n
"""

# KEYS: the locks. ARGV: owner, milliseconds. Per lock, 1 if taken now or already held by this owner, else 0.
ACQUIRE = """
local taken = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) or redis.call('GET', key) == ARGV[1] then
    taken[i] = 1
  else
    taken[i] = 0
  end
end
return taken
"""


class RedisKeyLocks:
    def __init__(self, client: Redis, owner: str, seconds: float, *, wire: Wire | None = None) -> None:
        self.r = client
        self._wire = wire  # a batch's locks: one packed script call, read by the wire's small reader
        self.owner = owner
        self.ms = max(1, int(seconds * 1000))
        self._owned = client.register_script(OWNED)
        self._acquire = client.register_script(ACQUIRE)

    async def acquire(self, keys: Sequence[str]) -> list[bool]:
        """Try each lock once; True for those taken (or already held by this owner)."""
        if not keys:
            return []
        # One script, not a pipeline of a SET and a GET per lock: a tenth of the client's packing and parsing.
        if self._wire is not None:
            (answers,) = self._wire.run_scripts([(self._acquire, evalsha(self._acquire, keys, [self.owner, self.ms]))])
            if isinstance(answers, Exception):
                raise answers
        else:
            answers = await self._acquire(keys=list(keys), args=[self.owner, self.ms])
        return [answer == 1 for answer in answers]

    async def renew(self, keys: Sequence[str]) -> None:
        if keys:
            await self._owned(keys=list(keys), args=[self.owner, self.ms])

    async def release(self, keys: Sequence[str]) -> None:
        if keys:
            await self._owned(keys=list(keys), args=[self.owner, ""])
