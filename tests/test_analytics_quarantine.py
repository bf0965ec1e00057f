"""No entry that reached the stream can stop the batch. Entries
that are not valid events are quarantined before SQL; a chunk the database refuses is
split until the entries at fault are isolated and quarantined; everything else is counted
exactly once; the admin shows the quarantine to those with the view permission only."""

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.db import OperationalError
from django.test import Client
from django.utils import timezone
from django.utils.html import escape

from analytics import services, validation
from analytics.ingest import STREAM_KEY, record_events
from analytics.models import AppliedBatch, QuarantinedEvent, RawEvent
from analytics.services import GROUP, analytics_process_batch
from news.factories import NewsFactory
from news.models import News
from nextevent.redis import get_redis

pytestmark = pytest.mark.django_db

DEEP_40 = '{"a":' * 40 + "1" + "}" * 40  # 241 bytes; MariaDB's JSON check refuses depth >= 32


def pending():
    client = get_redis()
    return client.xpending(STREAM_KEY, GROUP)["pending"] if client.exists(STREAM_KEY) else 0


def good(news, n, user="u"):
    return [{"news_id": news.pk, "event_type": "view", "user_id": f"{user}{i}"} for i in range(n)]


def xadd_deep(news):
    return get_redis().xadd(STREAM_KEY, {"n": news.pk, "t": "view", "u": "deep", "m": DEEP_40}).decode()


def test_a_40_deep_entry_xadded_between_good_ones_is_quarantined_and_the_rest_counted_exactly():
    news = NewsFactory()
    record_events(good(news, 120, "a"))
    bad_id = xadd_deep(news)
    record_events(good(news, 80, "b"))
    summary = analytics_process_batch(reason="test", chunk_size=50)
    assert "200 counted" in summary and "1 quarantined" in summary
    assert News.objects.get(pk=news.pk).view_count == 200 and RawEvent.objects.count() == 200
    row = QuarantinedEvent.objects.get()
    assert (row.stream_id, row.stage) == (bad_id, "check")
    assert row.error.startswith("m: nested deeper than 30 levels")
    assert json.loads(row.fields) == {"n": str(news.pk), "t": "view", "u": "deep", "m": DEEP_40}
    assert pending() == 0 and get_redis().xlen(STREAM_KEY) == 0
    # The next batches proceed.
    record_events(good(news, 30, "c"))
    assert "30 counted" in analytics_process_batch(reason="test")
    assert News.objects.get(pk=news.pk).view_count == 230


def test_entries_an_older_version_accepted_are_still_counted():
    """Ingest's policy is stricter than the database: metadata 20 levels deep or with an
    integer beyond 64 bits, buffered before an upgrade, is counted, not quarantined."""
    news = NewsFactory()
    get_redis().xadd(STREAM_KEY, {"n": news.pk, "t": "view", "m": '{"a":' * 20 + "1" + "}" * 20})
    get_redis().xadd(STREAM_KEY, {"n": news.pk, "t": "view", "m": '{"big":18446744073709551616}'})
    assert "2 counted" in analytics_process_batch(reason="test")
    assert RawEvent.objects.filter(metadata__big=18446744073709551616).exists()


def test_a_chunk_the_database_refuses_is_split_until_the_bad_entry_is_isolated(monkeypatch, caplog):
    """An older version whose check let depth 40 through: MariaDB itself refuses the chunk
    (error 4025). Before the fix every later batch failed on the same chunk."""
    monkeypatch.setattr(validation, "MAX_STORED_METADATA_DEPTH", 100)
    a, b = NewsFactory(), NewsFactory()
    events = good(a, 70, "a") + [{"news_id": b.pk, "event_type": "like"}] * 13
    record_events(events[:40])
    first_bad = xadd_deep(a)
    record_events(events[40:])
    second_bad = xadd_deep(b)
    record_events(good(b, 9, "z"))
    summary = analytics_process_batch(reason="test", chunk_size=64)
    assert f"{len(events) + 9} counted" in summary and "2 quarantined" in summary, summary
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.view_count, b.like_count, b.view_count) == (70, 13, 9)
    assert RawEvent.objects.count() == len(events) + 9
    rows = {r.stream_id: r for r in QuarantinedEvent.objects.all()}
    assert set(rows) == {first_bad, second_bad}
    assert all(r.stage == "database" and "4025" in r.error for r in rows.values()), [r.error for r in rows.values()]
    # Every entry is recorded as applied exactly once: the parts' records do not overlap.
    keys = []
    for batch in AppliedBatch.objects.all():
        keys += batch.entry_keys.split() if batch.entry_keys else [batch.first_key, batch.last_key]
    assert len(keys) == len(set(keys))
    assert sum(AppliedBatch.objects.values_list("counted", flat=True)) == len(events) + 9
    assert pending() == 0 and get_redis().xlen(STREAM_KEY) == 0
    record_events(good(a, 5, "n"))
    assert "5 counted" in analytics_process_batch(reason="test")


def test_a_quarantine_replayed_after_a_crash_before_the_ack_is_not_repeated(monkeypatch, settings):
    settings.ANALYTICS_CLAIM_IDLE_SECONDS = 0
    monkeypatch.setattr(validation, "MAX_STORED_METADATA_DEPTH", 100)
    news = NewsFactory()
    record_events(good(news, 10))
    xadd_deep(news)
    real_ack = services._ack

    def lost_redis(client, ids):
        raise ConnectionError("lost Redis after the commit")

    monkeypatch.setattr(services, "_ack", lost_redis)
    with pytest.raises(ConnectionError):
        analytics_process_batch(reason="test")
    monkeypatch.setattr(services, "_ack", real_ack)
    summary = analytics_process_batch(reason="test")
    assert "11 already counted" in summary and "0 quarantined" in summary
    assert News.objects.get(pk=news.pk).view_count == 10 and QuarantinedEvent.objects.count() == 1


def test_a_database_outage_is_not_mistaken_for_bad_entries(monkeypatch):
    news = NewsFactory()
    record_events(good(news, 10))

    def gone(events):
        raise OperationalError(2013, "Lost connection to server during query")

    monkeypatch.setattr(services, "_write_counters", gone)
    with pytest.raises(OperationalError):
        analytics_process_batch(reason="test")
    assert not QuarantinedEvent.objects.exists() and pending() == 10


def test_a_python_error_on_one_entry_is_isolated_too(monkeypatch):
    news = NewsFactory()
    record_events(good(news, 20))
    real_write = services._write_counters
    poison = {"u7"}

    def picky(events):
        if any(e.user_id.decode() in poison for e in events):
            raise ValueError("cannot turn this entry into rows")
        real_write(events)

    monkeypatch.setattr(services, "_write_counters", picky)
    summary = analytics_process_batch(reason="test")
    assert "19 counted" in summary and "1 quarantined" in summary
    assert QuarantinedEvent.objects.get().error == "ValueError: cannot turn this entry into rows"


@pytest.fixture
def quarantined():
    news = NewsFactory()
    xadd_deep(news)
    analytics_process_batch(reason="test")
    return QuarantinedEvent.objects.get()


def staff(username, *perms):
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=perms))
    client = Client()
    client.force_login(user)
    return client


URL = "/admin/analytics/quarantinedevent/"


def test_the_admin_shows_the_quarantine_read_only_to_those_with_the_view_permission(quarantined):
    viewer = staff("viewer", "view_quarantinedevent")
    page = viewer.get(URL).content.decode()
    assert quarantined.stream_id in page and "nested deeper than 30 levels" in page
    detail = viewer.get(f"{URL}{quarantined.pk}/change/")
    assert detail.status_code == 200 and escape(quarantined.fields) in detail.content.decode()  # the entry itself
    assert 'name="_save"' not in detail.content.decode()
    assert viewer.get(f"{URL}{quarantined.pk}/delete/").status_code == 403
    assert viewer.get(f"{URL}add/").status_code == 403
    assert viewer.post(URL, {"action": "delete_selected", "_selected_action": [quarantined.pk]}).status_code in (
        200, 302, 403)
    assert QuarantinedEvent.objects.filter(pk=quarantined.pk).exists()


def test_a_staff_user_without_analytics_permissions_does_not_see_the_quarantine(quarantined):
    other = staff("other", "view_news")
    assert other.get(URL).status_code == 403
    assert other.get(f"{URL}{quarantined.pk}/change/").status_code == 403
    assert "quarantinedevent" not in other.get("/admin/").content.decode()
    assert timezone.now() >= quarantined.quarantined_at


def test_quarantined_entries_are_deleted_after_the_raw_event_retention(quarantined, settings):
    from datetime import timedelta

    from analytics.services import analytics_cleanup

    settings.ANALYTICS_RAW_RETENTION_DAYS = 30
    now = timezone.now()
    analytics_cleanup(now=now)
    assert QuarantinedEvent.objects.filter(pk=quarantined.pk).exists()
    analytics_cleanup(now=now + timedelta(days=31))
    assert not QuarantinedEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_periodic_job_completes_through_the_engine_with_a_poison_entry_in_the_buffer(monkeypatch):
    """The issue's scenario end to end: before the fix the job failed on every run."""
    from analytics.jobs import analytics_enqueue_batch
    from jobs.models import Job, JobState
    from jobs.worker import run_job

    monkeypatch.setattr(validation, "MAX_STORED_METADATA_DEPTH", 100)  # let MariaDB itself refuse it
    news = NewsFactory()
    record_events(good(news, 7))
    xadd_deep(news)
    record_events(good(news, 5, "v"))
    job_id = int(analytics_enqueue_batch().split()[1])
    assert run_job(job_id) == "completed"
    job = Job.objects.get(pk=job_id)
    assert job.state == JobState.COMPLETED and "12 counted" in job.result and "1 quarantined" in job.result
    assert News.objects.get(pk=news.pk).view_count == 12
    assert QuarantinedEvent.objects.get().stage == "database"
