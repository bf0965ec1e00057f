"""The project's one Redis client factory: every connection uses settings.REDIS (host, port,
db and password), the same keywords django-q2's broker gets."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    # redis-py's pool notices a fork and reconnects, so one client per process is safe.
    return make_client()


def make_client(**overrides) -> redis.Redis:
    """A new client on settings.REDIS, or on the master the sentinels name (REDIS_SENTINELS)."""
    from nextevent.redis_sentinel import make_client as _make

    return _make(settings.REDIS, settings.REDIS_SENTINEL, **overrides)


def queue_key(queue: str) -> str:
    """django-q2's list for a cluster (brokers/redis_broker.py)."""
    return f"django_q:{queue}:q"


# Compare-and-delete: release a lock or cached value only if it is still the one we set.
_DELETE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def delete_if_equal(client: redis.Redis, key: str, value: str) -> bool:
    return bool(client.eval(_DELETE_IF_EQUAL, 1, key, value))
