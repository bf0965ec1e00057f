"""POST /api/analytics/events, and the admin pages that show the counters."""

import json

import pytest
from django.test import Client

from analytics import known_news
from analytics.ingest import STREAM_KEY
from analytics.services import analytics_process_batch
from news.factories import NewsFactory
from nextevent.redis import get_redis

URL = "/api/analytics/events"


def post(client, body, **extra):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", **extra)


def stored():
    return get_redis().xrange(STREAM_KEY)


pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_news_cache():
    known_news.forget()
    yield
    known_news.forget()


@pytest.fixture
def api():
    # Pages and apps send no CSRF token: the endpoint must not ask for one.
    return Client(enforce_csrf_checks=True)


def test_it_accepts_one_event(api):
    news = NewsFactory()
    response = post(api, {"news_id": news.pk, "event_type": "view", "user_id": "u1", "metadata": {"ref": "home"}})
    assert response.status_code == 202 and response.json() == {"accepted": 1, "dropped_unknown_news": 0}
    [(_, fields)] = stored()
    assert fields == {b"n": str(news.pk).encode(), b"t": b"view", b"u": b"u1", b"m": b'{"ref":"home"}'}


def test_it_accepts_a_batch_as_an_events_object_or_a_bare_array(api):
    ids = [NewsFactory().pk for _ in range(5)]
    batch = [{"news_id": ids[i % 5], "event_type": "like"} for i in range(1000)]
    assert post(api, {"events": batch}).json() == {"accepted": 1000, "dropped_unknown_news": 0}
    assert post(api, batch[:3]).json() == {"accepted": 3, "dropped_unknown_news": 0}
    assert len(stored()) == 1003


@pytest.mark.parametrize("body,status,error,field,index", [
    ({"news_id": "x", "event_type": "view"}, 400, "news_id: must be a positive integer", "news_id", None),
    ({"news_id": 1, "event_type": "poke"}, 400, "event_type: must be one of view, share, like", "event_type", None),
    ({"news_id": 1, "event_type": "view", "metadata": {"k": "v" * 5000}}, 400, "metadata: is ", "metadata", None),
    ({"event_type": "view"}, 400, "news_id: is required", "news_id", None),
    ({"events": [{"news_id": 1, "event_type": "view"}, {"news_id": 0, "event_type": "view"}]}, 400,
     "events[1].news_id: must be a positive integer", "news_id", 1),
    ([{"news_id": 1, "event_type": "view"}, {"news_id": 1, "event_type": "view", "user_id": ""}], 400,
     "events[1].user_id:", "user_id", 1),
    ([{"news_id": 1, "event_type": "view"}, 7], 400, "events[1].event: must be a JSON object", "event", 1),
    ({"events": [{"news_id": 1, "event_type": "view"}] * 1001}, 400, "events: at most 1000 per request", "events", None),
    ({"events": []}, 400, "events: must hold at least one event", "events", None),
    ([{"news_id": 1, "event_type": "view", "events": 1}], 400, "events[0].events: unknown field", "events", 0),
    ({"events": {"news_id": 1}}, 400, "events: must be a JSON array", "events", None),
    ({"events": [], "x": 1}, 400, "x: unknown field", "x", None),
    (b"{not json", 400, "body: not valid JSON", "body", None),
    (b"\xff\xfe\x00", 400, "body: not UTF-8", "body", None),
    (b"42", 400, "events: must be a JSON array", "events", None),
])
def test_it_refuses_bad_input_naming_the_field_and_index(api, body, status, error, field, index):
    response = post(api, body)
    assert response.status_code == status
    data = response.json()
    assert data["error"].startswith(error), data
    assert data["field"] == field and data.get("index") == index
    assert stored() == []


def test_it_refuses_a_body_over_the_size_limit(api, settings):
    settings.ANALYTICS_HTTP_MAX_BYTES = 2048
    batch = [{"news_id": 1, "event_type": "view", "user_id": f"user-{i:04d}"} for i in range(60)]
    assert len(json.dumps(batch)) > 2048
    response = post(api, batch)
    assert response.status_code == 413 and response.json()["field"] == "body"
    assert stored() == []


def test_it_answers_only_post(api):
    response = api.get(URL)
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert api.put(URL, data="{}", content_type="application/json").status_code == 405


def test_it_answers_503_when_the_buffer_is_down(api, settings):
    news = NewsFactory()
    settings.ANALYTICS_REDIS = {"url": "redis://127.0.0.1:1/0"}  # nothing listens there
    response = post(api, {"news_id": news.pk, "event_type": "view"})
    assert response.status_code == 503 and "buffer unavailable" in response.json()["error"]
    assert int(response["Retry-After"]) == settings.ANALYTICS_BUFFER_RETRY_AFTER


def test_the_admin_shows_counters_by_day_top_news_and_totals(admin_client):
    hot, cold = NewsFactory(title="Hot story"), NewsFactory(title="Cold story")
    client = Client()
    post(client, {"events": [{"news_id": hot.pk, "event_type": "view", "user_id": f"u{i}"} for i in range(9)]
                  + [{"news_id": cold.pk, "event_type": "view"}] * 2 + [{"news_id": hot.pk, "event_type": "share"}]})
    analytics_process_batch(reason="test")

    page = admin_client.get(f"/admin/news/news/{hot.pk}/change/").content.decode()
    assert "Analytics by day" in page
    assert "<td>9</td><td>1</td><td>0</td><td>9</td>" in page  # view, share, like, unique users
    assert f"?news__id__exact={hot.pk}" in page

    top = admin_client.get("/admin/analytics/topnewstoday/").content.decode()
    assert top.index("Hot story") < top.index("Cold story")

    by_day = admin_client.get(f"/admin/analytics/dailystat/?news__id__exact={hot.pk}")
    assert by_day.status_code == 200 and "Cold story" not in by_day.content.decode()
    assert admin_client.get("/admin/analytics/appliedbatch/").status_code == 200


def deep(levels):
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize("body,error,field,index", [
    # 40 levels is about 250 bytes, and MariaDB refuses depth 32.
    ('{"events":[{"news_id":1,"event_type":"view"},{"news_id":1,"event_type":"view","metadata":%s}]}' % deep(40),
     "events[1].metadata: nested deeper than 8 levels", "metadata", 1),
    ('{"news_id":1,"event_type":"view","metadata":{"x":NaN}}', "body: not valid JSON: NaN", "body", None),
    ('{"news_id":1,"event_type":"view","metadata":{"x":-Infinity}}', "body: not valid JSON: -Infinity", "body", None),
    ('{"news_id":1,"event_type":"view","metadata":{"x":1e400}}', "metadata: number must be finite", "metadata", None),
    ('{"news_id":1,"event_type":"view","metadata":{"x":18446744073709551616}}',
     "metadata: integer out of the 64-bit range (at .x)", "metadata", None),
    ('{"news_id":1,"event_type":"view","metadata":{"x":"\\ud800"}}',
     "metadata: string is not valid Unicode (a lone surrogate) (at .x)", "metadata", None),
    ('{"news_id":1,"event_type":"view","user_id":"\\udfff"}', "user_id: must be valid UTF-8", "user_id", None),
    ('{"news_id":1,"event_type":"view","user_id":%s}' % ("9" * 5000), "body: not valid JSON", "body", None),
    ("[" * 100_000 + "]" * 100_000, "body: nested too deeply", "body", None),
    ('{"news_id":1,"event_type":"view","metadata":%s}' % ("[" * 50_000 + "]" * 50_000), "body: nested too deeply",
     "body", None),
    ('{"news_id":1,"event_type":"view"}'.encode("utf-16"), "body: not UTF-8", "body", None),
])
def test_it_refuses_what_the_database_would_refuse_with_400_naming_the_field(api, body, error, field, index):
    response = post(api, body)
    assert response.status_code == 400
    data = response.json()
    assert data["error"].startswith(error), data
    assert data["field"] == field and data.get("index") == index
    assert stored() == []
