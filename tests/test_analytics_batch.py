"""The batch: exact counts into daily counters, running totals, unique users and raw
events; unknown news dropped once; replays after a crash not counted twice; batches
running at once; retention; the job path."""

import logging
import random
import threading
from collections import Counter
from datetime import datetime, time as dtime, timedelta

import pytest
from django.db import connections
from django.utils import timezone

from analytics import services
from analytics.ingest import STREAM_KEY, record_event, record_events
from analytics.models import AppliedBatch, DailyStat, DailyUser, QuarantinedEvent, RawEvent
from analytics.selectors import news_daily_stats, top_news_by_views, unique_users
from analytics.services import GROUP, analytics_cleanup, analytics_process_batch
from jobs.models import Job, JobState
from news.factories import NewsFactory
from news.models import News
from nextevent.redis import get_redis
from analytics.jobs import analytics_enqueue_batch
from jobs.maintenance import cleanup

TOTAL_FIELDS = {"view": "view_count", "share": "share_count", "like": "like_count"}


def make_workload(news_ids, n, seed=1):
    rnd = random.Random(seed)
    events = []
    for _ in range(n):
        event = {"news_id": rnd.choice(news_ids), "event_type": rnd.choice(["view", "view", "view", "share", "like"])}
        if rnd.random() < 0.7:
            event["user_id"] = rnd.choice([f"user-{rnd.randrange(40)}", rnd.randrange(40)])
        if rnd.random() < 0.2:
            event["metadata"] = {"ref": rnd.choice(["home", "search", "wechat"])}
        events.append(event)
    return events


def expected_counts(events, day):
    daily = Counter((e["news_id"], day, e["event_type"]) for e in events)
    users = {(e["news_id"], day, str(e["user_id"])) for e in events if "user_id" in e}
    return daily, users


def actual_daily():
    return Counter({(n, d, t): c for n, d, t, c in DailyStat.objects.values_list("news_id", "day", "event_type", "count")})


def actual_users():
    return set(DailyUser.objects.values_list("news_id", "day", "user_id"))


def assert_counted_exactly(events, day):
    daily, users = expected_counts(events, day)
    assert actual_daily() == daily
    assert actual_users() == users
    assert RawEvent.objects.count() == len(events)
    for news in News.objects.all():
        for event_type, field in TOTAL_FIELDS.items():
            assert getattr(news, field) == sum(c for (n, _, t), c in daily.items() if n == news.pk and t == event_type)


def buffer_empty():
    client = get_redis()
    pending = client.xpending(STREAM_KEY, GROUP)["pending"] if client.exists(STREAM_KEY) else 0
    return client.xlen(STREAM_KEY) == 0 and pending == 0


# Events are stamped with Redis's clock: keep the run clear of midnight rather than move it.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clear_of_local_midnight")]


def test_it_counts_a_mixed_workload_exactly_across_many_chunks():
    news_ids = [NewsFactory().pk for _ in range(4)]
    events = make_workload(news_ids, 1500)
    record_events(events[:1000])
    for e in events[1000:]:
        record_event(**e)
    summary = analytics_process_batch(reason="test", chunk_size=97)
    assert "1500 events in 16 chunk(s)" in summary and "1500 counted" in summary
    assert_counted_exactly(events, timezone.localdate())
    assert buffer_empty()
    assert sum(AppliedBatch.objects.values_list("counted", flat=True)) == 1500
    # A second run finds nothing and changes nothing.
    assert analytics_process_batch(reason="test").startswith("0 events")
    assert_counted_exactly(events, timezone.localdate())


def test_the_selectors_read_the_counters():
    a, b = NewsFactory(), NewsFactory()
    record_events([{"news_id": a.pk, "event_type": "view", "user_id": u} for u in ["x", "y", "x", "X"]]
                  + [{"news_id": b.pk, "event_type": "view"}] * 6 + [{"news_id": a.pk, "event_type": "like"}])
    analytics_process_batch(reason="test")
    today = timezone.localdate()
    assert top_news_by_views() == [(b.pk, 6), (a.pk, 4)]
    assert unique_users(news_id=a.pk, day=today) == 3  # user ids are case-sensitive
    assert news_daily_stats(news_id=a.pk) == [{"day": today, "view": 4, "share": 0, "like": 1, "unique_users": 3}]


def xadd_at(moment, fields, seq):
    ms = int(moment.timestamp() * 1000)
    get_redis().xadd(STREAM_KEY, fields, id=f"{ms}-{seq}")


def test_events_are_counted_on_their_day_in_the_configured_time_zone():
    news = NewsFactory()
    today = timezone.localdate()
    midnight = timezone.make_aware(datetime.combine(today, dtime.min))
    xadd_at(midnight - timedelta(milliseconds=100), {"n": news.pk, "t": "view", "u": "ann"}, 0)
    xadd_at(midnight + timedelta(milliseconds=100), {"n": news.pk, "t": "view", "u": "ann"}, 0)
    record_event(news_id=news.pk, event_type="view", user_id="ann")
    analytics_process_batch(reason="test")
    yesterday = today - timedelta(days=1)
    assert actual_daily() == {(news.pk, yesterday, "view"): 1, (news.pk, today, "view"): 2}
    assert actual_users() == {(news.pk, yesterday, "ann"), (news.pk, today, "ann")}
    raw = RawEvent.objects.order_by("id").first()
    assert raw.occurred_at == midnight - timedelta(milliseconds=100)


def test_events_for_news_that_does_not_exist_are_counted_dropped_logged_and_not_retried(caplog):
    news = NewsFactory()
    missing = news.pk + 1000
    record_events([{"news_id": news.pk, "event_type": "view"}] * 3 + [{"news_id": missing, "event_type": "like"}] * 2)
    with caplog.at_level(logging.WARNING, logger="analytics.services"):
        summary = analytics_process_batch(reason="test")
    assert "3 counted, 2 dropped (unknown news)" in summary
    assert f"ids [{missing}]" in caplog.text
    assert AppliedBatch.objects.get().dropped_unknown_news == 2
    assert buffer_empty()
    assert actual_daily() == {(news.pk, timezone.localdate(), "view"): 3}
    assert analytics_process_batch(reason="test").startswith("0 events")


def test_entries_that_are_not_valid_events_are_quarantined_and_acknowledged():
    news = NewsFactory()
    client = get_redis()
    client.xadd(STREAM_KEY, {"junk": "1"})
    client.xadd(STREAM_KEY, {"n": "abc", "t": "view"})
    client.xadd(STREAM_KEY, {"n": news.pk, "t": "click"})
    client.xadd(STREAM_KEY, {"n": news.pk, "t": "view", "m": "not json"})
    client.xadd(STREAM_KEY, {"n": news.pk, "t": "view", "u": "x" * 65})
    record_event(news_id=news.pk, event_type="share")
    summary = analytics_process_batch(reason="test")
    assert "1 counted" in summary and "5 quarantined" in summary
    assert buffer_empty()
    assert News.objects.get(pk=news.pk).share_count == 1
    errors = dict(QuarantinedEvent.objects.values_list("fields", "error"))
    assert errors['{"junk": "1"}'] == "entry: unknown field b'junk'; known: n, t, u, m"
    assert errors['{"n": "abc", "t": "view"}'].startswith("n: news id must be a positive 64-bit integer")
    assert errors[f'{{"n": "{news.pk}", "t": "click"}}'].startswith("t: event type must be one of view, share, like")
    assert errors[f'{{"m": "not json", "n": "{news.pk}", "t": "view"}}'].startswith("m: metadata is not JSON")
    assert errors[f'{{"n": "{news.pk}", "t": "view", "u": "{"x" * 65}"}}'].startswith("user_id: must be 1 to 64")
    assert set(QuarantinedEvent.objects.values_list("stage", flat=True)) == {"check"}


def test_a_chunk_that_fails_before_commit_is_counted_once_by_the_next_run(monkeypatch, settings):
    settings.ANALYTICS_CLAIM_IDLE_SECONDS = 0
    news = NewsFactory()
    events = make_workload([news.pk], 300)
    record_events(events)
    real_write = services._write_counters
    calls = []

    def fail_on_second_chunk(chunk):
        calls.append(len(chunk))
        real_write(chunk)  # the writes happen, then the transaction is rolled back
        if len(calls) == 2:
            raise RuntimeError("database went away mid-chunk")

    monkeypatch.setattr(services, "_write_counters", fail_on_second_chunk)
    with pytest.raises(RuntimeError):
        analytics_process_batch(reason="test", chunk_size=100)
    assert RawEvent.objects.count() == 100  # the first chunk only
    assert get_redis().xpending(STREAM_KEY, GROUP)["pending"] == 100
    monkeypatch.setattr(services, "_write_counters", real_write)
    summary = analytics_process_batch(reason="test", chunk_size=100)
    assert "100 taken over" in summary
    assert_counted_exactly(events, timezone.localdate())
    assert buffer_empty()


def test_a_chunk_committed_but_not_acknowledged_is_not_counted_twice(monkeypatch, settings):
    settings.ANALYTICS_CLAIM_IDLE_SECONDS = 0
    news = NewsFactory()
    events = make_workload([news.pk], 250)
    record_events(events)
    real_ack = services._ack

    def crash_on_ack(client, ids):
        raise ConnectionError("lost Redis after the commit")

    monkeypatch.setattr(services, "_ack", crash_on_ack)
    with pytest.raises(ConnectionError):
        analytics_process_batch(reason="test", chunk_size=100)
    assert RawEvent.objects.count() == 100
    monkeypatch.setattr(services, "_ack", real_ack)
    summary = analytics_process_batch(reason="test", chunk_size=100)
    assert "100 already counted" in summary and "100 taken over" in summary
    assert_counted_exactly(events, timezone.localdate())
    assert buffer_empty()


def test_a_partly_applied_takeover_chunk_records_its_exact_entries(monkeypatch, settings):
    """Entries taken over from two dead batches, one of which had committed: only the
    other's are counted, and the record lists exactly those (the range has gaps)."""
    settings.ANALYTICS_CLAIM_IDLE_SECONDS = 0
    news = NewsFactory()
    client = get_redis()
    services.ensure_group(client)
    record_events([{"news_id": news.pk, "event_type": "view"}] * 30)
    first = services._read_new(client, "dead-1", 10)
    second = services._read_new(client, "dead-2", 10)
    services.apply_chunk(first, fresh_read=True, reason="test", consumer="dead-1")  # committed, never acked
    summary = analytics_process_batch(reason="test")
    assert "10 already counted" in summary and "20 taken over" in summary
    assert News.objects.get(pk=news.pk).view_count == 30
    listed = AppliedBatch.objects.exclude(entry_keys="").get()
    assert listed.entry_keys.split() == sorted(e.key for e in second)
    assert buffer_empty()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("claim_idle", [0, 30])
def test_batches_running_at_once_count_exactly(settings, claim_idle):
    """With claim_idle 0 every batch also takes over the others' in-flight entries, the
    worst case for counting twice."""
    settings.ANALYTICS_CLAIM_IDLE_SECONDS = claim_idle
    news_ids = [NewsFactory().pk for _ in range(10)]
    events = make_workload(news_ids, 4000, seed=claim_idle)
    for start in range(0, len(events), 1000):
        record_events(events[start:start + 1000])
    errors = []

    def run():
        try:
            # Short runs, so that each one's takeover pass meets the others' chunks in flight.
            for _ in range(100):
                analytics_process_batch(reason="test", chunk_size=50, max_events=200)
                if buffer_empty():
                    break
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert_counted_exactly(events, timezone.localdate())
    assert buffer_empty()
    assert len({c for c in AppliedBatch.objects.values_list("consumer", flat=True)}) >= 2  # really concurrent


def test_a_run_stops_at_its_limit_and_enqueues_the_next():
    news = NewsFactory()
    record_events([{"news_id": news.pk, "event_type": "view"}] * 50)
    summary = analytics_process_batch(reason="periodic", max_events=20, chunk_size=10)
    assert "20 counted" in summary and "next run enqueued" in summary
    job = Job.objects.get(job_type="news:analytics")
    assert job.unique_key == "news:analytics:threshold" and job.payload == {"reason": "continue"}


def test_the_run_leaves_no_consumers_behind():
    news = NewsFactory()
    record_events([{"news_id": news.pk, "event_type": "view"}] * 5)
    analytics_process_batch(reason="test")
    analytics_process_batch(reason="test")
    assert get_redis().xinfo_consumers(STREAM_KEY, GROUP) == []


@pytest.mark.django_db(transaction=True)
def test_the_periodic_job_counts_the_buffer_through_the_engine():
    from jobs.worker import run_job

    news = NewsFactory()
    record_events([{"news_id": news.pk, "event_type": "like", "user_id": "u"}] * 7)
    job_id = int(analytics_enqueue_batch().split()[1])
    assert run_job(job_id) == "completed"
    job = Job.objects.get(pk=job_id)
    assert job.state == JobState.COMPLETED and "7 counted" in job.result
    assert News.objects.get(pk=news.pk).like_count == 7


def test_cleanup_deletes_raw_events_past_their_retention_and_keeps_counters(settings):
    settings.ANALYTICS_RAW_RETENTION_DAYS = 30
    news = NewsFactory()
    record_events([{"news_id": news.pk, "event_type": "view"}] * 4)
    analytics_process_batch(reason="test")
    now = timezone.now()
    RawEvent.objects.filter(pk__in=list(RawEvent.objects.values_list("pk", flat=True)[:3])).update(
        occurred_at=now - timedelta(days=31))
    AppliedBatch.objects.update(applied_at=now - timedelta(days=31))
    assert analytics_cleanup(now=now) == 3
    assert RawEvent.objects.count() == 1 and not AppliedBatch.objects.exists()
    assert News.objects.get(pk=news.pk).view_count == 4 and DailyStat.objects.get().count == 4


def test_the_daily_cleanup_task_runs_the_analytics_cleanup():

    news = NewsFactory()
    record_events([{"news_id": news.pk, "event_type": "view"}] * 2)
    analytics_process_batch(reason="test")
    RawEvent.objects.update(occurred_at=timezone.now() - timedelta(days=400))
    assert "analytics_raw=2" in cleanup()


def test_deleting_a_news_item_deletes_its_counters():
    news = NewsFactory()
    record_events([{"news_id": news.pk, "event_type": "view", "user_id": "a"}])
    analytics_process_batch(reason="test")
    news.delete()
    assert not DailyStat.objects.exists() and not DailyUser.objects.exists()


def test_user_ids_and_metadata_are_stored_exactly_whatever_they_contain():
    news = NewsFactory()
    tricky_user = "o'brien\\\"); DROP TABLE news_news; --"
    metadata = {"q": "it's \"quoted\" \\ back\nslash", "emoji": "\U0001f600", "zh": "新闻", "n": [1, None, True]}
    record_events([{"news_id": news.pk, "event_type": "view", "user_id": tricky_user, "metadata": metadata},
                   {"news_id": news.pk, "event_type": "view", "user_id": "\U0001f600" * 64},
                   {"news_id": news.pk, "event_type": "view", "user_id": "Ann"},
                   {"news_id": news.pk, "event_type": "view", "user_id": "ann"}])
    analytics_process_batch(reason="test")
    first = RawEvent.objects.order_by("id").first()
    assert (first.user_id, first.metadata) == (tricky_user, metadata)
    assert {u for _, _, u in actual_users()} == {tricky_user, "\U0001f600" * 64, "Ann", "ann"}
    assert News.objects.get(pk=news.pk).view_count == 4
