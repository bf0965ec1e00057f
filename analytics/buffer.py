"""The analytics buffer's Redis, and the one way events are written to it.

The buffer may live on its own Redis (ANALYTICS_REDIS_URL): a flood of events then cannot
fill the Redis that carries the job wake-ups. Either way, every write goes through one Lua
script that, atomically, refuses the whole request when the stream already holds
ANALYTICS_BUFFER_MAX_EVENTS (back-pressure) or when the client's events-per-window budget
is spent (rate limit), and otherwise appends every entry: a request is all or nothing.
"""

from __future__ import annotations

import functools
import math

import redis
from django.conf import settings

from nextevent.redis import get_redis


class BufferRefused(Exception):
    """Nothing was written. `retry_after` is in whole seconds (at least 1)."""

    status = 503

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, retry_after)


class BufferFull(BufferRefused):
    status = 503


class RateLimited(BufferRefused):
    status = 429


def buffer_redis() -> redis.Redis:
    """The client for the buffer: settings.ANALYTICS_REDIS (a URL and an optional
    password) or, when that is None, the project's Redis."""
    config = settings.ANALYTICS_REDIS
    if not config:
        return get_redis()
    return _client(config["url"], config.get("password") or None)


@functools.lru_cache(maxsize=4)
def _client(url: str, password: str | None) -> redis.Redis:
    from nextevent.config import _redis_retry

    extra = {"password": password} if password else {}
    # The same timeouts and quick retries as the main client (nextevent/config.py).
    return redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30, retry=_redis_retry(),
                                **extra)


# KEYS[1] the stream, KEYS[2] the client's events counter ("" when not rate limited).
# ARGV: max length (0: none), events limit (0: none), window ms, entry count, then for each
# entry its field count and its field/value pairs.
# Checks come before the first write, and Redis runs a script alone: either every XADD
# happens or none. (Under maxmemory, Redis refuses a script's first write, never a later one.)
_APPEND = """
local n = tonumber(ARGV[4])
local maxlen = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
if maxlen > 0 and len + n > maxlen then
  return {-1, len, ''}
end
local limit = tonumber(ARGV[2])
if limit > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + n > limit then
    return {-2, redis.call('PTTL', KEYS[2]), ''}
  end
  if redis.call('INCRBY', KEYS[2], n) == n then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
end
local i = 5
local last = ''
for e = 1, n do
  local k = tonumber(ARGV[i])
  local args = {}
  for j = 1, 2 * k do
    args[j] = ARGV[i + j]
  end
  i = i + 2 * k + 1
  last = redis.call('XADD', KEYS[1], '*', unpack(args))
end
return {len + n, 0, last}
"""


@functools.lru_cache(maxsize=1)
def _script():
    # A Script object computes the SHA once and runs EVALSHA on whichever client it is
    # given (loading the script after a Redis restart).
    return get_redis().register_script(_APPEND)


def append(stream_key: str, entries: list[dict], *, rate_key: str | None = None,
           rate_limit: int = 0, window_seconds: float = 60) -> tuple[int, str]:
    """Append every entry or none. Returns (stream length after, last entry id). Raises
    BufferFull past settings.ANALYTICS_BUFFER_MAX_EVENTS, RateLimited when `rate_key` has
    spent `rate_limit` events in its window, redis.RedisError if Redis is down."""
    argv: list = [settings.ANALYTICS_BUFFER_MAX_EVENTS, rate_limit if rate_key else 0,
                  int(window_seconds * 1000), len(entries)]
    for fields in entries:
        argv.append(len(fields))
        for name, value in fields.items():
            argv += (name, value)
    client = buffer_redis()
    code, value, last = _script()(keys=[stream_key, rate_key or ""], args=argv, client=client)
    if code == -1:
        raise BufferFull(f"the analytics buffer holds {value} events (limit {settings.ANALYTICS_BUFFER_MAX_EVENTS}); "
                         "try again later", settings.ANALYTICS_BUFFER_RETRY_AFTER)
    if code == -2:
        retry = math.ceil(value / 1000) if value > 0 else math.ceil(window_seconds)
        raise RateLimited(f"at most {rate_limit} events per {window_seconds:g} s from one client", retry)
    return code, last.decode() if isinstance(last, bytes) else last
