"""The analytics buffer's Redis, and the one way events are written to it.

The buffer may live on its own Redis (ANALYTICS_REDIS_URL): a flood of events then cannot
fill the Redis that carries the job wake-ups. Either way, every write goes through one Lua
script that, atomically, refuses the whole request when the stream already holds
ANALYTICS_BUFFER_MAX_EVENTS events or about ANALYTICS_BUFFER_MAX_BYTES of memory
(back-pressure) or when the client's events-per-window budget is spent (rate limit), and
otherwise appends every entry: a request is all or nothing.
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


class NotReplicated(redis.RedisError):
    """The events are on the master but fewer replicas than ANALYTICS_WAIT_REPLICAS confirmed
    them in time: a failover now would lose them. The caller should retry (if they survive,
    a retry counts them twice: at least once, not exactly once)."""


def buffer_redis() -> redis.Redis:
    """The client for the buffer: settings.ANALYTICS_REDIS (a URL, or a master the sentinels
    name, and an optional password) or, when that is None, the project's Redis."""
    config = settings.ANALYTICS_REDIS
    if not config:
        return get_redis()
    if "sentinel_master" in config:
        return _sentinel_client(config["sentinel_master"], config["db"], config.get("password") or None)
    return _client(config["url"], config.get("password") or None)


@functools.lru_cache(maxsize=4)
def _client(url: str, password: str | None) -> redis.Redis:
    from nextevent.config import _redis_retry, redis_wait_options

    extra = {"password": password} if password else {}
    # The same timeouts and quick retries as the main client (nextevent/config.py); a unix
    # socket takes no TCP keepalive.
    waits = redis_wait_options(settings.REDIS_SOCKET_TIMEOUT)
    if url.startswith("unix://"):
        waits = {"socket_timeout": waits["socket_timeout"], "health_check_interval": waits["health_check_interval"]}
    return redis.Redis.from_url(url, socket_connect_timeout=5, retry=_redis_retry(), **waits, **extra)


@functools.lru_cache(maxsize=4)
def _sentinel_client(master: str, db: int, password: str | None) -> redis.Redis:
    """The master named `master` by the project's sentinels (REDIS_SENTINELS), asked again on
    every new connection, so a failover of the analytics Redis is followed like the main one's."""
    from nextevent.redis_sentinel import make_client

    sentinel = {**settings.REDIS_SENTINEL, "master": master}
    # The main server's ACL user and password are not the analytics server's.
    return make_client(settings.REDIS, sentinel, db=db, password=password, username=None)



# Redis memory one entry takes, estimated from its fields' bytes: measured on Redis 7.0
# (bench/analytics_memory.py) at 19-23 bytes for {n, t}, 38-42 for the typical mix and
# 5,150-5,380 for the largest event allowed; this estimate gives 29, ~42 and ~5,440.
ENTRY_OVERHEAD_BYTES = 16


def accounted_bytes(fields: dict) -> int:
    """The bytes an entry is counted as against ANALYTICS_BUFFER_MAX_BYTES."""
    payload = sum(len(_as_bytes(k)) + len(_as_bytes(v)) for k, v in fields.items())
    return ENTRY_OVERHEAD_BYTES + (payload * 13 + 9) // 10


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


BYTES_KEY = "nextevent:analytics:buffer-bytes"
# KEYS[2] when a call is not rate limited (the script never reads or writes it then). Redis
# checks every declared key against the ACL user's key patterns (deploy/redis.conf allows
# nextevent:* and a few more): an empty name there was refused with NOPERM.
NO_RATE_KEY = "nextevent:analytics:rate:none"

# KEYS: the stream, the client's events counter (NO_RATE_KEY when not rate limited), the buffer's
# byte counter. ARGV: max length (0: none), events limit (0: none), window ms, entry
# count, max bytes (0: none), this request's bytes, then for each entry its field count
# and its field/value pairs.
# Checks come before the first write, and Redis runs a script alone: either every XADD
# happens or none. (Under maxmemory, Redis refuses a script's first write, never a later one.)
# The byte counter goes up here and down when the batch deletes entries (analytics/services.py
# _ack); an empty stream resets it, so a stream emptied by hand cannot leave it stuck high.
_APPEND = """
local n = tonumber(ARGV[4])
local maxlen = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
if maxlen > 0 and len + n > maxlen then
  return {-1, len, ''}
end
local maxbytes = tonumber(ARGV[5])
local size = tonumber(ARGV[6])
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
if len == 0 or held < 0 then
  held = 0
end
if maxbytes > 0 and held + size > maxbytes then
  return {-3, held, ''}
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
redis.call('SET', KEYS[3], held + size)
local i = 7
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
    BufferFull past settings.ANALYTICS_BUFFER_MAX_EVENTS or ANALYTICS_BUFFER_MAX_BYTES
    (estimated by accounted_bytes), RateLimited when `rate_key` has spent `rate_limit`
    events in its window, redis.RedisError if Redis is down."""
    size = sum(accounted_bytes(fields) for fields in entries)
    argv: list = [settings.ANALYTICS_BUFFER_MAX_EVENTS, rate_limit if rate_key else 0,
                  int(window_seconds * 1000), len(entries), settings.ANALYTICS_BUFFER_MAX_BYTES, size]
    for fields in entries:
        argv.append(len(fields))
        for name, value in fields.items():
            argv += (name, value)
    client = buffer_redis()
    wanted = settings.ANALYTICS_WAIT_REPLICAS
    if not wanted:
        code, value, last = _script()(keys=[stream_key, rate_key or NO_RATE_KEY, BYTES_KEY], args=argv, client=client)
    else:
        # WAIT counts the writes of its own connection: the script and WAIT go down one
        # connection in one pipeline. Without it, an acknowledged event that had not reached
        # a replica when the master died is lost in the failover, silently.
        pipe = client.pipeline(transaction=False)
        _script()(keys=[stream_key, rate_key or NO_RATE_KEY, BYTES_KEY], args=argv, client=pipe)
        pipe.execute_command("WAIT", wanted, settings.ANALYTICS_WAIT_TIMEOUT_MS)
        (code, value, last), confirmed = pipe.execute()
        if code >= 0 and int(confirmed) < wanted:
            raise NotReplicated(f"{len(entries)} event(s) written but confirmed by {confirmed} of {wanted} "
                                f"replica(s) within {settings.ANALYTICS_WAIT_TIMEOUT_MS} ms "
                                "(ANALYTICS_WAIT_REPLICAS)")
    if code == -1:
        raise BufferFull(f"the analytics buffer holds {value} events (limit {settings.ANALYTICS_BUFFER_MAX_EVENTS}); "
                         "try again later", settings.ANALYTICS_BUFFER_RETRY_AFTER)
    if code == -3:
        raise BufferFull(f"the analytics buffer holds about {value} bytes (limit {settings.ANALYTICS_BUFFER_MAX_BYTES}); "
                         "try again later", settings.ANALYTICS_BUFFER_RETRY_AFTER)
    if code == -2:
        retry = math.ceil(value / 1000) if value > 0 else math.ceil(window_seconds)
        raise RateLimited(f"at most {rate_limit} events per {window_seconds:g} s from one client", retry)
    return code, last.decode() if isinstance(last, bytes) else last


# KEYS: the stream, the byte counter. ARGV: the group, then (entry id, accounted bytes)
# pairs. Acknowledges and deletes the entries, and takes off the counter the bytes of those
# this call really deleted: two batches acknowledging the same entry (one took over the
# other's) release its bytes once.
_ACK = """
local ids = {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  if #ids == 1000 then  -- unpack() is limited to a few thousand values
    redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
    ids = {}
  end
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
end
local freed = 0
for i = 2, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    freed = freed + tonumber(ARGV[i + 1])
  end
end
if freed > 0 then
  redis.call('DECRBY', KEYS[2], freed)
end
return freed
"""


@functools.lru_cache(maxsize=1)
def _ack_script():
    return get_redis().register_script(_ACK)


def acknowledge(client: redis.Redis, stream_key: str, group: str, entries: list[tuple[str, dict | None]]) -> int:
    """XACK and XDEL (entry id, fields) pairs in one step, releasing their bytes from the
    budget. Returns the bytes released."""
    args: list = [group]
    for entry_id, fields in entries:
        args += (entry_id, accounted_bytes(fields) if fields else 0)
    return _ack_script()(keys=[stream_key, BYTES_KEY], args=args, client=client)
