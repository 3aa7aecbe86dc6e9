"""One rate budget for every worker of a connection, in Redis.

The same rules as the in-process budget (:class:`engine.delivery.rate_limit.LocalBudget`),
run as Lua scripts so that each step is atomic across workers, and timed by
the Redis server's clock, so that workers on machines whose clocks differ
still agree on when a window ends. What any worker learns from the
destination's ``X-RateLimit-*`` answer governs all of them; requests in flight
are counted across all of them too, and a pause after a 429 holds them all.

What an answer teaches (``learn``) may wait a few milliseconds and go with
the process's next call to Redis (:mod:`.deferred`): the next ``take``, which
also carries the journal's record of the delivery. Every other call
sends what waits ahead of itself, so one process's calls keep their order.
"""

from __future__ import annotations

from redis import Redis

from .deferred import DeferredCalls
from .errors import reading, writing
from .keys import Keys
from .wire import evalsha

IDLE_SECONDS = 7200  # a budget nobody used for this long is forgotten

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000"

# KEYS: the budget. ARGV: rate, capacity. Returns '' when a request was taken, else the seconds to wait.
TAKE = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'paused_until', 'remaining', 'reset', 'tokens', 'last')
local paused = tonumber(h[1]) or 0
redis.call('EXPIRE', KEYS[1], %d)
if paused - now > 0 then return tostring(paused - now) end
local remaining, reset = tonumber(h[2]), tonumber(h[3])
local last = tonumber(h[5]) or now
if remaining and reset and now >= reset then
  redis.call('HDEL', KEYS[1], 'remaining', 'reset')
  redis.call('HSET', KEYS[1], 'in_flight', 0)
  remaining, reset, last = nil, nil, now
end
if remaining then
  if remaining >= 1 then
    redis.call('HSET', KEYS[1], 'remaining', tostring(remaining - 1))
    redis.call('HINCRBY', KEYS[1], 'in_flight', 1)
    return ''
  end
  if reset then return tostring(reset - now) end
  redis.call('HDEL', KEYS[1], 'remaining')
end
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens = tonumber(h[4]) or capacity
tokens = math.min(capacity, tokens + (now - last) * rate)
if tokens >= 1 then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'last', tostring(now))
  redis.call('HINCRBY', KEYS[1], 'in_flight', 1)
  return ''
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'last', tostring(now))
return tostring((1 - tokens) / rate)
"""
    % IDLE_SECONDS
)

# KEYS: the budget. ARGV: remaining, reset_raw, reset_in, window_in ('' = not given).
LEARN = (
    _NOW
    + """
local in_flight = math.max(0, (tonumber(redis.call('HGET', KEYS[1], 'in_flight')) or 0) - 1)
redis.call('HSET', KEYS[1], 'in_flight', in_flight)
local remaining = tonumber(ARGV[1])
if remaining then remaining = math.max(0, remaining - in_flight) end
local raw = ARGV[2] ~= '' and ARGV[2] or nil
local reset = tonumber(redis.call('HGET', KEYS[1], 'reset'))
local reset_in, window_in = tonumber(ARGV[3]), tonumber(ARGV[4])
if reset_in then reset = now + reset_in redis.call('HSET', KEYS[1], 'reset', tostring(reset)) end
if window_in then
  if not reset or reset <= now then reset = now + window_in redis.call('HSET', KEYS[1], 'reset', tostring(reset)) end
  raw = 'window@' .. tostring(reset)
end
if remaining then
  local known = tonumber(redis.call('HGET', KEYS[1], 'remaining'))
  local same = raw ~= nil and raw == redis.call('HGET', KEYS[1], 'reset_raw')
  if same and known then remaining = math.min(known, remaining) end
  redis.call('HSET', KEYS[1], 'remaining', tostring(remaining))
end
if raw then redis.call('HSET', KEYS[1], 'reset_raw', raw) end
redis.call('EXPIRE', KEYS[1], %d)
return 0
"""
    % IDLE_SECONDS
)

# KEYS: the budget. ARGV: seconds.
PAUSE = (
    _NOW
    + """
local until_ = now + math.max(0, tonumber(ARGV[1]))
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if until_ > paused then redis.call('HSET', KEYS[1], 'paused_until', tostring(until_)) end
redis.call('EXPIRE', KEYS[1], %d)
return 0
"""
    % IDLE_SECONDS
)

RESET_IN = (
    _NOW
    + """
local reset = tonumber(redis.call('HGET', KEYS[1], 'reset'))
if not reset then return '' end
return tostring(math.max(0, reset - now))
"""
)


class RedisRateBudget:
    """The :class:`~engine.delivery.rate_limit.RateBudget` of one connection, shared through Redis.

    If Redis cannot be reached, a request is not refused: ``take`` answers
    a short wait and asks again, so deliveries pause instead of failing.
    """

    RETRY_SECONDS = 1.0

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        name: str,
        rate: float,
        capacity: float,
        deferred: DeferredCalls | None = None,
    ) -> None:
        self.r = client
        self.deferred = deferred or DeferredCalls(client)
        self.key = keys.rate(name)
        self.rate = rate
        self.capacity = capacity
        self._take = client.register_script(TAKE)
        self._learn = client.register_script(LEARN)
        self._pause = client.register_script(PAUSE)
        self._reset_in = client.register_script(RESET_IN)
        self._take_packed = evalsha(self._take, [self.key], [repr(self.rate), repr(self.capacity)])  # never changes

    def take(self) -> float | None:
        try:
            with writing("the rate budget"):
                answer = self.deferred.now_packed(self._take, self._take_packed)
        except OSError:
            return self.RETRY_SECONDS
        return None if not answer else float(answer)

    def learn(
        self, remaining: float | None, reset_raw: str | None, reset_in: float | None, window_in: float | None
    ) -> None:
        try:
            with writing("the rate budget"):
                self.deferred.later(
                    self._learn, [self.key], [_arg(remaining), reset_raw or "", _arg(reset_in), _arg(window_in)]
                )
        except OSError:
            pass  # the next answer teaches it again

    def pause(self, seconds: float) -> None:
        try:
            with writing("the rate budget"):
                self.deferred.now(self._pause, [self.key], [repr(max(0.0, seconds))])
        except OSError:
            pass

    def reset_in(self) -> float | None:
        try:
            with reading("the rate budget"):
                answer = self.deferred.now(self._reset_in, [self.key], [])
        except OSError:
            return None
        return float(answer) if answer else None


def _arg(value: float | None) -> str:
    return "" if value is None else repr(float(value))
