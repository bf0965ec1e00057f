"""The public endpoint cannot flood the Redis that carries the jobs.
JSON bodies only (no cross-site simple POST), unknown news never buffered, a per-client
rate limit (429 + Retry-After), back-pressure past a buffer length (503 + Retry-After,
nothing half-written), and the buffer on its own Redis with a password."""

import os
import json
import shutil
import socket
import subprocess
import sys
import threading

import pytest
import redis
from django.test import Client

from analytics import known_news
from analytics.buffer import BYTES_KEY, BufferFull
from analytics.ingest import STREAM_KEY, record_event, record_events
from analytics.services import analytics_process_batch
from news.factories import NewsFactory
from news.models import News
from nextevent.redis import get_redis
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.django_db
URL = "/api/analytics/events"


@pytest.fixture(autouse=True)
def fresh_news_cache():
    known_news.forget()
    yield
    known_news.forget()


@pytest.fixture
def news():
    return NewsFactory()


def post(body, content_type="application/json", client=None, **extra):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return (client or Client()).post(URL, data=data, content_type=content_type, **extra)


def length():
    return get_redis().xlen(STREAM_KEY)


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "",
    "application/json-seq", "application/json; charset=utf-16", "text/json",
])
def test_only_json_bodies_are_accepted(news, content_type):
    response = post({"news_id": news.pk, "event_type": "view"}, content_type=content_type)
    assert response.status_code == 415, response.content
    assert response.json()["field"] == "body" and "application/json" in response.json()["error"] or \
        "UTF-8" in response.json()["error"]
    assert length() == 0
    assert post({"news_id": news.pk, "event_type": "view"},
                content_type="application/json; charset=UTF-8").status_code == 202


def test_events_for_unknown_news_are_dropped_counted_and_never_buffered(news):
    missing = news.pk + 1000
    response = post([{"news_id": news.pk, "event_type": "view"}, {"news_id": missing, "event_type": "view"},
                     {"news_id": missing + 1, "event_type": "like"}, {"news_id": news.pk, "event_type": "like"}])
    assert response.status_code == 202
    assert response.json() == {"accepted": 2, "dropped_unknown_news": 2}
    assert {int(f[b"n"]) for _, f in get_redis().xrange(STREAM_KEY)} == {news.pk}
    response = post({"news_id": missing, "event_type": "view"})
    assert response.json() == {"accepted": 0, "dropped_unknown_news": 1} and length() == 2


def test_an_item_created_after_its_id_was_refused_is_accepted(news):
    post({"news_id": news.pk + 1, "event_type": "view"})
    later = NewsFactory()
    assert later.pk == news.pk + 1
    assert post({"news_id": later.pk, "event_type": "view"}).json()["accepted"] == 1


def test_the_request_rate_limit_answers_429_with_retry_after_per_client(news, settings):
    settings.ANALYTICS_RATE_REQUESTS = 3
    settings.ANALYTICS_RATE_WINDOW_SECONDS = 30
    event = {"news_id": news.pk, "event_type": "view"}
    assert [post(event).status_code for _ in range(3)] == [202] * 3
    refused = post(event)
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 30
    assert "at most 3 requests per 30 s" in refused.json()["error"]
    # Invalid requests count too (they cost parsing), and are refused before parsing.
    assert post(b"{junk").status_code == 429
    assert length() == 3
    # Another client has its own budget; a client cannot pick its address by header.
    assert post(event, REMOTE_ADDR="10.0.0.9").status_code == 202
    assert post(event, HTTP_X_FORWARDED_FOR="10.0.0.10").status_code == 429


def test_the_window_passes_and_the_client_may_send_again(news, settings):
    settings.ANALYTICS_RATE_REQUESTS = 1
    settings.ANALYTICS_RATE_WINDOW_SECONDS = 1
    event = {"news_id": news.pk, "event_type": "view"}
    assert post(event).status_code == 202
    assert post(event).status_code == 429
    wait_for(lambda: post(event).status_code == 202, 10, 0.2, "the window to pass")


def test_the_events_rate_limit_refuses_a_whole_request_and_writes_none_of_it(news, settings):
    settings.ANALYTICS_RATE_EVENTS = 1000
    batch = [{"news_id": news.pk, "event_type": "view"}] * 600
    assert post(batch).status_code == 202
    refused = post(batch)
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert "at most 1000 events per 60 s" in refused.json()["error"]
    assert length() == 600  # nothing of the second request
    assert post(batch[:400]).status_code == 202 and length() == 1000
    # Dropped (unknown news) events do not spend the budget, accepted ones do.
    assert post(batch[:1], REMOTE_ADDR="10.1.1.1").status_code == 202


def test_behind_a_proxy_the_configured_header_names_the_client(news, settings):
    settings.ANALYTICS_CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"
    settings.ANALYTICS_RATE_REQUESTS = 1
    event = {"news_id": news.pk, "event_type": "view"}
    # The proxy appends the address it saw; what the client wrote before it is ignored.
    assert post(event, HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.7").status_code == 202
    assert post(event, HTTP_X_FORWARDED_FOR="5.6.7.8, 203.0.113.7").status_code == 429
    assert post(event, HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 202
    # Not an address: REMOTE_ADDR (127.0.0.1 here), not a key the client could vary.
    assert post(event, HTTP_X_FORWARDED_FOR="203.0.113.9, junk-1").status_code == 202
    assert post(event, HTTP_X_FORWARDED_FOR="203.0.113.9, junk-2").status_code == 429
    # IPv6 clients are one client per /64.
    assert post(event, HTTP_X_FORWARDED_FOR="2001:db8:1:2::1").status_code == 202
    assert post(event, HTTP_X_FORWARDED_FOR="2001:db8:1:2:ffff::9").status_code == 429
    keys = {k.decode() for k in get_redis().keys("nextevent:analytics:rate:requests:*")}
    assert keys == {f"nextevent:analytics:rate:requests:{a}" for a in ("203.0.113.7", "203.0.113.8", "127.0.0.1",
                                                                      "2001:db8:1:2::/64")}


def test_the_header_setting_is_read_as_an_http_header_name():
    from nextevent.config import ConfigError, Env, meta_header_name

    assert meta_header_name(Env({"H": "X-Forwarded-For"}), "H") == "HTTP_X_FORWARDED_FOR"
    assert meta_header_name(Env({"H": "x-real-ip"}), "H") == "HTTP_X_REAL_IP"
    assert meta_header_name(Env({}), "H") == ""
    with pytest.raises(ConfigError, match="H must be an HTTP header name"):
        meta_header_name(Env({"H": "X-Forwarded-For: 1.2.3.4"}), "H")


def test_past_the_buffer_limit_the_endpoint_answers_503_and_writes_nothing(news, settings):
    settings.ANALYTICS_BUFFER_MAX_EVENTS = 1500
    settings.ANALYTICS_BUFFER_RETRY_AFTER = 17
    batch = [{"news_id": news.pk, "event_type": "view"}] * 1000
    assert post(batch).status_code == 202
    full = post(batch)
    assert full.status_code == 503 and full["Retry-After"] == "17"
    assert "buffer holds 1000 events (limit 1500)" in full.json()["error"]
    assert length() == 1000
    assert post(batch[:500]).status_code == 202 and length() == 1500
    assert post(batch[:1]).status_code == 503
    with pytest.raises(BufferFull):
        record_event(news_id=news.pk, event_type="view")
    with pytest.raises(BufferFull):
        record_events(batch[:1])
    assert length() == 1500
    # The batch drains the buffer; then it takes events again.
    analytics_process_batch(reason="test")
    assert post(batch).status_code == 202
    assert News.objects.get(pk=news.pk).view_count == 1500


def test_past_the_memory_budget_the_endpoint_answers_503_and_writes_nothing(news, settings):
    settings.ANALYTICS_BUFFER_MAX_BYTES = 50_000
    large = {"news_id": news.pk, "event_type": "view", "user_id": "u" * 64, "metadata": {"k": "x" * 4000}}
    small = {"news_id": news.pk, "event_type": "like"}
    assert post([large] * 9).status_code == 202  # about 5,300 bytes each
    full = post([large] * 2)
    assert full.status_code == 503 and "buffer holds about" in full.json()["error"] and full["Retry-After"]
    assert length() == 9
    assert post([small] * 50).status_code == 202  # small events still fit
    assert post([small] * 1000).status_code == 503 and length() == 59
    # The batch releases what it deletes: the counter is back to zero and large events fit again.
    analytics_process_batch(reason="test")
    assert int(get_redis().get(BYTES_KEY)) == 0
    assert post([large] * 9).status_code == 202


def test_an_entry_acknowledged_twice_releases_its_bytes_once(news, settings):
    from analytics import services
    from analytics.buffer import acknowledge

    record_events([{"news_id": news.pk, "event_type": "view", "user_id": f"u{i}"} for i in range(9000)])
    held = int(get_redis().get(BYTES_KEY))
    client = get_redis()
    services.ensure_group(client)
    entries = services._read_new(client, "one", 10_000)  # more ids than Lua's unpack() takes (8,000)
    pairs = [(e.entry_id, e.fields) for e in entries]
    assert acknowledge(client, STREAM_KEY, services.GROUP, pairs) == held
    assert acknowledge(client, STREAM_KEY, services.GROUP, pairs) == 0  # a second batch, same entries
    assert int(get_redis().get(BYTES_KEY)) == 0 and length() == 0


def test_the_byte_counter_cannot_stay_stuck_after_the_stream_is_emptied_by_hand(news, settings):
    settings.ANALYTICS_BUFFER_MAX_BYTES = 10_000
    get_redis().set(BYTES_KEY, 10**9)  # e.g. a stream deleted with DEL while counted
    assert post({"news_id": news.pk, "event_type": "view"}).status_code == 202


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_at_the_limit_are_each_all_or_nothing(settings):
    settings.ANALYTICS_BUFFER_MAX_EVENTS = 2000
    settings.ANALYTICS_RATE_REQUESTS = 0
    news = NewsFactory()
    sizes = [300, 700, 450, 999, 1, 250, 800, 120]

    statuses = {}

    def send(size):
        statuses[size] = post([{"news_id": news.pk, "event_type": "view", "user_id": f"s{size}"}] * size).status_code

    threads = [threading.Thread(target=send, args=(s,)) for s in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    accepted = [s for s, status in statuses.items() if status == 202]
    assert set(statuses.values()) <= {202, 503} and 503 in statuses.values()
    entries = get_redis().xrange(STREAM_KEY)
    assert len(entries) == sum(accepted) <= 2000
    per_request = {}
    for _, fields in entries:
        per_request[fields[b"u"]] = per_request.get(fields[b"u"], 0) + 1
    assert per_request == {f"s{s}".encode(): s for s in accepted}


# ---------------------------------------------------------------- a Redis of its own

PORT = 16531
PASSWORD = "analytics-only-secret"


@pytest.fixture
def own_redis(tmp_path):
    binary = shutil.which("redis-server")
    if not binary:
        pytest.skip("redis-server not installed")
    proc = subprocess.Popen([binary, "--port", str(PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--requirepass", PASSWORD, "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", PORT), 0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, 20, 0.1, "the private redis-server")
        yield redis.Redis(port=PORT, password=PASSWORD)
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_buffer_can_live_on_its_own_redis_with_a_password(news, settings, own_redis):
    settings.ANALYTICS_REDIS = {"url": f"redis://127.0.0.1:{PORT}/3", "password": PASSWORD}
    assert post([{"news_id": news.pk, "event_type": "share"}] * 4).status_code == 202
    mine = redis.Redis(port=PORT, password=PASSWORD, db=3)
    assert mine.xlen(STREAM_KEY) == 4 and length() == 0  # nothing on the jobs' Redis
    assert mine.keys("nextevent:analytics:rate:*")  # the rate limit's counters too
    record_event(news_id=news.pk, event_type="share")
    summary = analytics_process_batch(reason="test")
    assert "5 counted" in summary and mine.xlen(STREAM_KEY) == 0
    assert News.objects.get(pk=news.pk).share_count == 5
    # A wrong password is an unavailable buffer: 503, never a 500.
    settings.ANALYTICS_REDIS = {"url": f"redis://127.0.0.1:{PORT}/3", "password": "wrong"}
    response = post({"news_id": news.pk, "event_type": "share"})
    assert response.status_code == 503 and "Retry-After" in response


def test_the_url_setting_is_checked_at_start_up():
    from nextevent.config import ConfigError, Env, analytics_redis_config

    assert analytics_redis_config(Env({})) is None
    assert analytics_redis_config(Env({"ANALYTICS_REDIS_URL": "redis://h:6380/2", "ANALYTICS_REDIS_PASSWORD": "p"})) \
        == {"url": "redis://h:6380/2", "password": "p"}
    with pytest.raises(ConfigError, match="ANALYTICS_REDIS_URL must start with redis://"):
        analytics_redis_config(Env({"ANALYTICS_REDIS_URL": "http://h:6380"}))


def test_a_flood_of_refusals_is_logged_once_not_once_per_request(news, settings, caplog, monkeypatch):
    import logging

    from analytics import views

    monkeypatch.setattr(views, "_last_logged", {})
    settings.ANALYTICS_BUFFER_MAX_EVENTS = 1
    event = {"news_id": news.pk, "event_type": "view"}
    with caplog.at_level(logging.WARNING, logger="analytics.views"):
        statuses = [post([event] * 2).status_code for _ in range(50)]
    assert statuses == [503] * 50
    assert len([r for r in caplog.records if r.name == "analytics.views"]) == 1


@pytest.mark.parametrize("name,value,line", [
    ("ANALYTICS_RATE_EVENTS", "10", "configuration error: ANALYTICS_RATE_EVENTS must be 0 or >= 1000, got 10"),
    ("ANALYTICS_REDIS_URL", "http://cache:6379",
     "configuration error: ANALYTICS_REDIS_URL must start with redis://, rediss:// or unix://, got 'http://cache:6379'"),
    ("ANALYTICS_CLIENT_IP_HEADER", "X-Forwarded-For:",
     "configuration error: ANALYTICS_CLIENT_IP_HEADER must be an HTTP header name such as X-Forwarded-For, "
     "got 'X-Forwarded-For:'"),
    ("ANALYTICS_BUFFER_MAX_BYTES", "-1", "configuration error: ANALYTICS_BUFFER_MAX_BYTES must be >= 0, got -1"),
])
def test_a_bad_analytics_setting_stops_start_up_with_one_line(name, value, line):
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DJANGO_SECRET_KEY": os.environ["DJANGO_SECRET_KEY"], name: value}, timeout=60)
    assert result.returncode == 2 and result.stderr.strip() == line, result.stderr[-500:]
