"""deploy/redis.conf as shipped (its ACL user, noeviction), on a private redis-server with a tiny
maxmemory: when Redis is full, ingest refuses with 503 and nothing already buffered is evicted."""

import re
import subprocess
import time
from pathlib import Path

import pytest
import redis

from analytics.ingest import STREAM_KEY
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "deploy" / "redis.conf"
PORT = 16740


@pytest.fixture
def shipped_redis(tmp_path, settings):
    from nextevent.redis import get_redis

    password = re.search(r"^user nextevent on >(\S+)", CONF.read_text(), re.MULTILINE).group(1)
    proc = subprocess.Popen(["redis-server", str(CONF), "--port", str(PORT), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--logfile", str(tmp_path / "redis.log"), "--pidfile", str(tmp_path / "redis.pid"),
                             "--daemonize", "no", "--maxmemory", "3mb"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=PORT, username="nextevent", password=password)

    def up():
        try:
            return client.ping()
        except redis.ConnectionError:
            time.sleep(0.05)
            return False

    wait_for(up, 10, message="redis-server with deploy/redis.conf")
    settings.REDIS = {"host": "127.0.0.1", "port": PORT, "db": 0, "username": "nextevent", "password": password}
    get_redis.cache_clear()
    yield client
    get_redis.cache_clear()
    proc.terminate()
    proc.wait(10)


@pytest.mark.django_db
def test_a_full_redis_answers_503_and_keeps_every_accepted_event(shipped_redis, client, settings):
    from news.factories import NewsFactory

    with pytest.raises(redis.ResponseError, match="no permissions"):
        shipped_redis.flushall()  # the ACL user cannot wipe the buffer
    settings.ANALYTICS_RATE_EVENTS = settings.ANALYTICS_RATE_REQUESTS = 0  # Redis's memory is the limit here
    ids = [NewsFactory().pk for _ in range(7)]  # the endpoint drops unknown items
    batch = {"events": [{"news_id": ids[i % 7], "event_type": "view", "user_id": f"u{i}"} for i in range(1000)]}
    accepted, statuses = 0, []
    for _ in range(300):  # bounded: 3 MB fills long before 300,000 events
        response = client.post("/api/analytics/events", batch, content_type="application/json")
        statuses.append(response.status_code)
        if response.status_code != 202:
            break
        accepted += response.json()["accepted"]
    assert statuses[-1] == 503 and accepted > 0, statuses
    assert b"OOM" not in response.content  # the client gets the documented message, not Redis's
    # noeviction: everything acknowledged is still there; and a refused batch left nothing behind.
    assert shipped_redis.xlen(STREAM_KEY) == accepted


@pytest.mark.django_db
def test_the_acl_user_can_record_events_without_a_rate_limit(shipped_redis):
    """The Python API (no client, so no rate key) under the shipped ACL: every key the buffer's
    script declares must match the user's key patterns, or Redis refuses the call (NOPERM)."""
    from analytics.ingest import enqueue_news_analytics, record_events
    from news.factories import NewsFactory

    news_id = NewsFactory().pk
    assert enqueue_news_analytics(news_id, "view", user_id="u1")
    assert record_events([{"news_id": news_id, "event_type": "like"}] * 3) == 3
    assert shipped_redis.xlen(STREAM_KEY) == 4
