"""Is MySQL there, is Redis there: the one home of the reachability checks used by the health
check, /readyz, the metrics scrape and qcluster's start-up."""

from __future__ import annotations

from django.conf import settings
from django.db import connection

PROBE_TIMEOUT = 1.0  # seconds a readiness probe or a scrape waits for Redis


def check_database() -> None:
    """Raise if the default database does not answer a trivial query."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_redis(timeout: float = PROBE_TIMEOUT) -> None:
    """PING Redis once, raising within about `timeout` seconds if it does not answer. The
    shared client (nextevent.redis.get_redis) retries with backoff, far longer on a silent
    host: too slow for a probe or a scrape. Same connection settings (settings.REDIS), one
    attempt, closed at once."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from nextevent.redis import make_client

    # Through the sentinels when REDIS_SENTINELS is set, so "Redis" means the current master.
    client = make_client(socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    finally:
        client.close()
