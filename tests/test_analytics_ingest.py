"""Ingest: validation (every error names its field, and its index in a batch), the stream
entries written, and the threshold that enqueues the batch job."""

import pytest

from analytics import ingest
from analytics.ingest import STREAM_KEY, EventError, record_event, record_events
from jobs.models import Job, JobState
from analytics.ingest import enqueue_news_analytics
from nextevent.redis import get_redis


@pytest.fixture(autouse=True)
def fresh_length_counter(monkeypatch):
    monkeypatch.setattr(ingest, "_since_check", 0)


def entries():
    return get_redis().xrange(STREAM_KEY)


def test_it_appends_one_event_and_returns_its_stream_id():
    entry_id = record_event(news_id=7, event_type="view", user_id=42, metadata={"ref": "home", "n": [1, 2]})
    [(got_id, fields)] = entries()
    assert got_id.decode() == entry_id
    assert fields == {b"n": b"7", b"t": b"view", b"u": b"42", b"m": b'{"ref":"home","n":[1,2]}'}


def test_it_leaves_out_an_absent_user_and_empty_metadata():
    record_event(news_id=7, event_type="like", metadata={})
    [(_, fields)] = entries()
    assert fields == {b"n": b"7", b"t": b"like"}


def test_the_scheduler_entry_point_records_an_event():
    enqueue_news_analytics(3, "share", "u-1", {"a": 1})
    [(_, fields)] = entries()
    assert fields[b"n"] == b"3" and fields[b"t"] == b"share" and fields[b"u"] == b"u-1"


def test_it_appends_many_events_in_one_call_and_returns_the_count():
    events = [{"news_id": i % 5 + 1, "event_type": ("view", "share", "like")[i % 3], "user_id": f"u{i}"}
              for i in range(1000)]
    assert record_events(events) == 1000
    stored = entries()
    assert len(stored) == 1000
    assert [int(f[b"n"]) for _, f in stored] == [e["news_id"] for e in events]  # in order


def test_an_empty_list_records_nothing():
    assert record_events([]) == 0
    assert entries() == []


BAD_EVENTS = [
    ({"news_id": 0, "event_type": "view"}, "news_id"),
    ({"news_id": -3, "event_type": "view"}, "news_id"),
    ({"news_id": "12", "event_type": "view"}, "news_id"),
    ({"news_id": 1.0, "event_type": "view"}, "news_id"),
    ({"news_id": True, "event_type": "view"}, "news_id"),
    ({"news_id": None, "event_type": "view"}, "news_id"),
    ({"news_id": 2**63, "event_type": "view"}, "news_id"),
    ({"news_id": 1, "event_type": "click"}, "event_type"),
    ({"news_id": 1, "event_type": "VIEW"}, "event_type"),
    ({"news_id": 1, "event_type": None}, "event_type"),
    ({"news_id": 1, "event_type": 1}, "event_type"),
    ({"news_id": 1, "event_type": "view", "user_id": ""}, "user_id"),
    ({"news_id": 1, "event_type": "view", "user_id": "x" * 65}, "user_id"),
    ({"news_id": 1, "event_type": "view", "user_id": " ann"}, "user_id"),
    ({"news_id": 1, "event_type": "view", "user_id": True}, "user_id"),
    ({"news_id": 1, "event_type": "view", "user_id": 1.5}, "user_id"),
    ({"news_id": 1, "event_type": "view", "user_id": {"id": 1}}, "user_id"),
    ({"news_id": 1, "event_type": "view", "user_id": "\ud800"}, "user_id"),
    ({"news_id": 1, "event_type": "view", "metadata": [1, 2]}, "metadata"),
    ({"news_id": 1, "event_type": "view", "metadata": "ref=home"}, "metadata"),
    ({"news_id": 1, "event_type": "view", "metadata": {"k": "x" * 4100}}, "metadata"),
    ({"news_id": 1, "event_type": "view", "metadata": {"k": float("nan")}}, "metadata"),
    ({"news_id": 1, "event_type": "view", "metadata": {"k": object()}}, "metadata"),
    ({"news_id": 1, "event_type": "view", "metadata": {"k": "\udfff"}}, "metadata"),
]


@pytest.mark.parametrize("event,field", BAD_EVENTS)
def test_it_refuses_an_invalid_event_naming_the_field(event, field):
    with pytest.raises(EventError) as err:
        record_event(**event)
    assert err.value.field == field and err.value.index is None
    assert str(err.value).startswith(f"{field}: ")
    assert entries() == []


@pytest.mark.parametrize("event,field", BAD_EVENTS)
def test_it_refuses_a_batch_with_an_invalid_event_naming_its_index_and_writes_nothing(event, field):
    good = {"news_id": 1, "event_type": "view"}
    with pytest.raises(EventError) as err:
        record_events([good, good, event, good])
    assert (err.value.field, err.value.index) == (field, 2)
    assert str(err.value).startswith(f"events[2].{field}: ")
    assert entries() == []


@pytest.mark.parametrize("event,field", [
    ({"event_type": "view"}, "news_id"),
    ({"news_id": 1}, "event_type"),
    ({"news_id": 1, "event_type": "view", "when": "now"}, "when"),
    ("view", "event"),
])
def test_it_refuses_batch_events_with_missing_or_unknown_fields(event, field):
    with pytest.raises(EventError) as err:
        record_events([{"news_id": 1, "event_type": "view"}, event])
    assert (err.value.field, err.value.index) == (field, 1)


def test_it_refuses_a_batch_that_is_not_a_list_or_too_long():
    with pytest.raises(EventError) as err:
        record_events({"news_id": 1, "event_type": "view"})
    assert err.value.field == "events"
    with pytest.raises(EventError) as err:
        record_events([{"news_id": 1, "event_type": "view"}] * (ingest.MAX_EVENTS_PER_CALL + 1))
    assert err.value.field == "events"
    assert entries() == []


def test_metadata_of_exactly_4_kb_is_accepted():
    metadata = {"k": "x" * (4096 - len('{"k":""}'))}
    record_event(news_id=1, event_type="view", metadata=metadata)
    assert len(entries()[0][1][b"m"]) == 4096


@pytest.mark.django_db
def test_passing_the_threshold_enqueues_one_batch_job(settings):
    settings.ANALYTICS_BATCH_THRESHOLD = 50
    settings.ANALYTICS_LENGTH_CHECK_EVERY = 10
    for _ in range(49):
        record_event(news_id=1, event_type="view")
    assert not Job.objects.filter(job_type="news:analytics").exists()
    for _ in range(30):
        record_event(news_id=1, event_type="view")
    record_events([{"news_id": 1, "event_type": "view"}] * 100)
    jobs = list(Job.objects.filter(job_type="news:analytics"))
    assert len(jobs) == 1
    assert jobs[0].unique_key == "news:analytics:threshold" and jobs[0].payload == {"reason": "threshold"}
    assert jobs[0].state == JobState.PENDING


@pytest.mark.django_db
def test_a_threshold_job_already_live_is_not_duplicated_after_the_cooldown(settings):
    settings.ANALYTICS_BATCH_THRESHOLD = 10
    record_events([{"news_id": 1, "event_type": "view"}] * 20)
    get_redis().delete(ingest.THRESHOLD_FLAG_KEY)  # cooldown over
    record_events([{"news_id": 1, "event_type": "view"}] * 20)
    assert Job.objects.filter(job_type="news:analytics").count() == 1


@pytest.mark.django_db
def test_below_the_threshold_no_job_is_enqueued(settings):
    settings.ANALYTICS_BATCH_THRESHOLD = 10_000
    record_events([{"news_id": 1, "event_type": "view"}] * 1000)
    assert not Job.objects.filter(job_type="news:analytics").exists()
