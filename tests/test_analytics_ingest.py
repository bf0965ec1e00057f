"""Ingest: validation (every error names its field, and its index in a batch), the stream
entries written, and the threshold that enqueues the batch job."""

import pytest

from analytics import ingest
from analytics.ingest import STREAM_KEY, EventError, record_event, record_events
from jobs.models import Job, JobState
from analytics.ingest import enqueue_news_analytics
from nextevent.redis import get_redis


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


def nested(levels, leaf=1):
    value = leaf
    for _ in range(levels - 1):
        value = {"a": value}
    return {"a": value} if levels else value


# Everything MariaDB's JSON check or columns would refuse when the batch writes it:
# refused here, naming the field and where inside it.
DATABASE_WOULD_REFUSE = [
    ({"metadata": nested(40)}, "metadata: nested deeper than 8 levels (at .a.a.a.a.a.a.a.a)"),
    ({"metadata": nested(9)}, "metadata: nested deeper than 8 levels"),
    ({"metadata": {"l": [[[[[[[[1]]]]]]]]}}, "metadata: nested deeper than 8 levels (at .l[0][0][0][0][0][0][0])"),
    ({"metadata": {"big": 2**64}}, "metadata: integer out of the 64-bit range (at .big)"),
    ({"metadata": {"neg": [-(2**63) - 1]}}, "metadata: integer out of the 64-bit range (at .neg[0])"),
    ({"metadata": {"x": float("inf")}}, "metadata: number must be finite (no NaN or Infinity) (at .x)"),
    ({"metadata": {"x": {"y": float("nan")}}}, "metadata: number must be finite"),
    ({"metadata": {"\ud800": 1}}, "metadata: key is not valid Unicode (a lone surrogate)"),
    ({"metadata": {"k": ["ok", "\udc00"]}}, "metadata: string is not valid Unicode (a lone surrogate) (at .k[1])"),
    ({"metadata": {1: "x"}}, "metadata: keys must be strings"),
    ({"metadata": {"k": b"bytes"}}, "metadata: bytes is not a JSON value (at .k)"),
    ({"user_id": 10**5000}, "user_id: an integer user id must fit in 64 bits"),
    ({"news_id": 10**5000}, "news_id: must be a positive integer of at most 64 bits, got an integer of"),
]


@pytest.mark.parametrize("extra,message", DATABASE_WOULD_REFUSE)
def test_it_refuses_what_the_database_would_refuse_naming_the_field(extra, message):
    event = {"news_id": 1, "event_type": "view", **extra}
    with pytest.raises(EventError) as err:
        record_event(**event)
    assert str(err.value).startswith(message)
    with pytest.raises(EventError) as err:
        record_events([{"news_id": 1, "event_type": "view"}, event])
    assert str(err.value).startswith(f"events[1].{message}") and err.value.index == 1
    assert entries() == []


def test_a_shared_list_does_not_make_the_walk_explode():
    wide = [0] * 100
    for _ in range(6):
        wide = [wide] * 100  # 10^14 values if walked naively
    with pytest.raises(EventError) as err:
        record_event(news_id=1, event_type="view", metadata={"w": wide})
    assert "more than 4096 values" in str(err.value)


def test_metadata_at_the_depth_limit_with_64_bit_extremes_is_accepted():
    metadata = nested(8, leaf=[2**63 - 1, -(2**63), 1.5e300, "\U0010ffff", None])
    metadata_7 = nested(7, leaf=[2**63 - 1, -(2**63), 1.5e300, "\U0010ffff", None])
    with pytest.raises(EventError):
        record_event(news_id=1, event_type="view", metadata=metadata)  # the list is level 9
    record_event(news_id=1, event_type="view", metadata=metadata_7)
    assert len(entries()) == 1


def test_the_largest_call_goes_through_the_append_script_in_one_piece():
    events = [{"news_id": 1 + i % 7, "event_type": "view", "user_id": f"u{i}", "metadata": {"i": i}}
              for i in range(ingest.MAX_EVENTS_PER_CALL)]
    assert record_events(events) == ingest.MAX_EVENTS_PER_CALL
    stored = entries()
    assert len(stored) == ingest.MAX_EVENTS_PER_CALL and stored[-1][1][b"m"] == b'{"i":9999}'
