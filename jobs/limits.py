"""Rate and concurrency limits declared on a job type, held in Redis across clusters and hosts.

    @job_type("push:send", queue="news", timeout=30, payload=PushPayload,
              rate=(5, 10), rate_key="{vendor}",           # at most 5 starts per 10 s per vendor
              concurrency=2, concurrency_key="{vendor}")   # at most 2 running per vendor

Why Redis, not the ledger: every claim already talks to Redis, a check is one round trip of
an atomic script, and the ledger could only count rows under a lock that every claim of the
type would queue on. Redis being away fails the check open (the job runs, a warning is
logged): a limit protects a vendor, it must not stop the newsroom's jobs.

- Rate: the `limits` library's moving window (a Redis list per key, one Lua script per hit):
  no window of `per` seconds ever holds more than `rate` starts, unlike a fixed window that
  allows 2x at its edge. Hits are stamped with the worker host's clock (the library's way):
  hosts must keep NTP time; a skew of s seconds can shift a window by s.
- Concurrency: a semaphore per key, a sorted set of "job:claim" members scored by a lease
  that the worker's lease keeper renews; a member whose worker died drops out when its lease
  (JOBS_LEASE_SECONDS) runs out, so a crash cannot hold a slot for ever.

A job over a limit is snoozed (services.job_snooze): back to scheduled, its attempt not
counted, waiting_reason saying which limit and until when; it is forwarded again when the
window frees (rate) or after a short recheck (concurrency), with a little jitter so that
waiting jobs do not all come back in the same instant."""

from __future__ import annotations

import logging
import random
import string
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings

logger = logging.getLogger(__name__)

PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
MAX_PER_SECONDS = 86400
KEY_PREFIX = "nextevent:limits"

# KEYS[1] the semaphore; ARGV: now, lease expiry, capacity, member. Drops expired members,
# then takes a slot if one is free (or keeps the member's own). Returns 1 if held, else 0.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) - tonumber(ARGV[1])) * 1000) + 1000)
  return 1
end
return 0
"""


class LimitError(ValueError):
    pass


@dataclass(frozen=True)
class Limits:
    rate: int | None = None  # starts per `per` seconds
    per: float = 1.0
    rate_key: str = ""  # a template over the payload's fields: "{account_id}"; "" = one for the type
    concurrency: int | None = None  # at most this many running
    concurrency_key: str = ""

    @classmethod
    def declare(cls, where: str, *, rate, rate_key: str, concurrency, concurrency_key: str) -> Limits | None:
        if rate is None and concurrency is None:
            if rate_key or concurrency_key:
                raise LimitError(f"{where}: rate_key / concurrency_key without rate / concurrency")
            return None
        count = per = None
        if rate is not None:
            if not (isinstance(rate, tuple) and len(rate) == 2):
                raise LimitError(f"{where}: rate must be (count, per), per in seconds or 'second', 'minute', "
                                 f"'hour', 'day'; got {rate!r}")
            count, per = rate
            per = PERIODS.get(per, per)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise LimitError(f"{where}: rate count must be a whole number >= 1, got {count!r}")
            if isinstance(per, bool) or not isinstance(per, (int, float)) or not 1 <= per <= MAX_PER_SECONDS:
                raise LimitError(f"{where}: rate per must be 1 to {MAX_PER_SECONDS} seconds or a period name, "
                                 f"got {rate[1]!r}")
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise LimitError(f"{where}: concurrency must be a whole number >= 1, got {concurrency!r}")
        for what, template in (("rate_key", rate_key), ("concurrency_key", concurrency_key)):
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(template or "") if f is not None]
            except ValueError as exc:
                raise LimitError(f"{where}: {what} {template!r} is not a format string: {exc}") from None
            if any(not f.isidentifier() for f in fields):
                raise LimitError(f"{where}: {what} {template!r}: use plain payload field names in braces")
        return cls(rate=count, per=float(per or 1), rate_key=rate_key or "", concurrency=concurrency,
                   concurrency_key=concurrency_key or "")

    def describe(self) -> str:
        parts = []
        if self.rate:
            parts.append(f"{self.rate} per {self.per:g} s" + (f" per {self.rate_key}" if self.rate_key else ""))
        if self.concurrency:
            parts.append(f"{self.concurrency} running" + (f" per {self.concurrency_key}" if self.concurrency_key else ""))
        return ", ".join(parts)


@dataclass(frozen=True)
class Held:
    """A concurrency slot held by one attempt; released when it ends."""

    key: str
    member: str


@dataclass(frozen=True)
class Wait:
    until: datetime
    reason: str


def _key_value(template: str, payload: dict) -> str:
    if not template:
        return "*"
    try:
        return template.format(**payload)[:100]
    except (KeyError, IndexError, ValueError):
        return "?"  # a payload without the field shares one bucket; it is not refused here


_limiter = None


def _moving_window():
    global _limiter
    if _limiter is None:
        from limits.storage import RedisStorage
        from limits.strategies import MovingWindowRateLimiter

        from nextevent.redis import get_redis

        storage = RedisStorage("redis://", connection_pool=get_redis().connection_pool, key_prefix=KEY_PREFIX)
        _limiter = MovingWindowRateLimiter(storage)
    return _limiter


def _rate_item(limits: Limits):
    from limits import RateLimitItemPerSecond

    # A moving window of `per` seconds (whole seconds: the library's unit).
    return RateLimitItemPerSecond(limits.rate, max(1, round(limits.per)))


def acquire(job_type: str, limits: Limits, job) -> tuple[Held | None, Wait | None]:
    """Check and take the job's limits: (a concurrency slot held or None, None) to run, or
    (None, Wait) when over a limit. Concurrency first: a slot is given back if the rate
    then refuses, while a rate hit cannot be given back."""
    from nextevent.redis import get_redis

    payload = job.payload or {}
    now = time.time()
    held = None
    try:
        if limits.concurrency:
            key = f"{KEY_PREFIX}:running:{job_type}:{_key_value(limits.concurrency_key, payload)}"
            member = f"{job.pk}:{job.claims}"
            ok = get_redis().eval(_ACQUIRE, 1, key, now, now + settings.JOBS_LEASE_SECONDS, limits.concurrency, member)
            if not ok:
                recheck = settings.JOBS_LIMIT_RECHECK_SECONDS
                return None, Wait(_at(now + recheck * random.uniform(1, 2)),
                                  f"concurrency limit: {limits.concurrency} running"
                                  + (f" for {limits.concurrency_key}={_key_value(limits.concurrency_key, payload)}"
                                     if limits.concurrency_key else "") + f" ({job_type})")
            held = Held(key, member)
        if limits.rate:
            value = _key_value(limits.rate_key, payload)
            item = _rate_item(limits)
            if not _moving_window().hit(item, job_type, value):
                release(held)
                reset = _moving_window().get_window_stats(item, job_type, value).reset_time
                # Spread the waiting jobs over about one slot's width after the window frees.
                until = max(reset, now) + random.uniform(0.01, limits.per / limits.rate)
                return None, Wait(_at(until), f"rate limit: {limits.rate} per {limits.per:g} s"
                                  + (f" for {limits.rate_key}={value}" if limits.rate_key else "") + f" ({job_type})")
    except Exception:
        logger.exception("job %s: limits of %s could not be checked (Redis?); running it anyway", job.pk, job_type)
        release(held)
        return None, None
    return held, None


def renew(held: Held | None) -> None:
    """From the lease keeper: keep the slot while the attempt runs."""
    if held is None:
        return
    from nextevent.redis import get_redis

    get_redis().zadd(held.key, {held.member: time.time() + settings.JOBS_LEASE_SECONDS}, xx=True)


def release(held: Held | None) -> None:
    if held is None:
        return
    from nextevent.redis import get_redis

    try:
        get_redis().zrem(held.key, held.member)
    except Exception:
        logger.exception("concurrency slot %s %s not released; it frees when its lease runs out", held.key,
                         held.member)


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=dt_timezone.utc)


# ---------------------------------------------------------------- counters for the domains
# The same module holds the project's other limits, so that there is one place for every
# counter: WeChat's daily budgets (a calendar day in Beijing, wechat/services/quota.py) and the
# analytics endpoint's per-client windows (analytics/ratelimit.py). They are not job starts,
# so they are not @job_type limits: a WeChat budget counts API calls inside a handler and
# resets at midnight in Beijing with WeChat's own quota (a moving window would refuse calls
# WeChat allows after midnight); the analytics limits count HTTP requests on the buffer's own
# Redis. Each takes the client it counts on.

# INCR and its expiry in one step: a key can never be left without a TTL (which would block
# the caller for good). ARGV[1]: the expiry in ms, set by the first hit. Returns {count, pttl}.
_FIXED_WINDOW = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return {n, redis.call('PTTL', KEYS[1])}
"""
_fixed_script = None  # redis-py's Script runs on whichever client it is given (EVALSHA, loaded if missing)


def fixed_window_hit(client, key: str, window_seconds: float) -> tuple[int, int]:
    """One hit on `key` in a fixed window that starts at its first hit and lasts
    `window_seconds`: (hits in the window so far, milliseconds until it ends)."""
    global _fixed_script
    if _fixed_script is None:
        _fixed_script = client.register_script(_FIXED_WINDOW)
    count, ttl_ms = _fixed_script(keys=[key], args=[int(window_seconds * 1000)], client=client)
    return int(count), int(ttl_ms)


def spend_budget(client, key: str, budget: int, *, keep_seconds: float) -> bool:
    """Spend one unit of a budget counted under `key` (a key per period, e.g. per day, chosen
    by the caller), kept `keep_seconds` after its first spend. False: the budget is spent."""
    count, _ = fixed_window_hit(client, key, keep_seconds)
    return count <= budget
