"""A batch that finds the apply lock held by another batch's open transaction (a host frozen
mid-chunk keeps its connection, and the lock, for as long as it is frozen) waits without
spending its retries, instead of failing on a lost connection until its job is dead."""

from __future__ import annotations

import time

import MySQLdb
import pytest

from analytics.jobs import handle_news_analytics
from analytics.ingest import record_event
from analytics.models import ApplyLock
from analytics.scheduling import NewsAnalyticsPayload
from analytics.services import LOCK_NAME
from jobs.errors import Snooze
from news.factories import NewsFactory
from news.models import News
from tests.ops_support import other_mysql_session
from tests.conftest import slack

pytestmark = pytest.mark.django_db(transaction=True)


def hold_the_apply_lock() -> MySQLdb.connections.Connection:
    other = other_mysql_session()
    cursor = other.cursor()
    cursor.execute("BEGIN")
    cursor.execute(f"SELECT id FROM {ApplyLock._meta.db_table} WHERE name = %s FOR UPDATE", [LOCK_NAME])
    assert cursor.fetchone()
    return other


def test_a_batch_that_finds_the_apply_lock_held_waits_and_counts_once_it_is_free(settings):
    settings.JOBS_DB_TIMEOUT = 5
    ApplyLock.objects.create(name=LOCK_NAME, held_by="host-a:1:frozen")
    news = NewsFactory()
    for user in range(7):
        record_event(news_id=news.pk, event_type="view", user_id=f"u{user}")

    holder = hold_the_apply_lock()
    try:
        started = time.monotonic()
        with pytest.raises(Snooze) as snoozed:
            handle_news_analytics(NewsAnalyticsPayload(reason="manual"), None)
        waited = time.monotonic() - started
        assert "another batch holds the analytics apply lock (last taken by host-a:1:frozen" in snoozed.value.reason
        assert waited < slack(5), waited  # the lock's own short wait, not the read timeout or TCP's
        assert News.objects.get(pk=news.pk).view_count == 0
    finally:
        holder.rollback()
        holder.close()

    # The lock free again: the entries this run had read are taken over and counted once.
    settings.ANALYTICS_CLAIM_IDLE_SECONDS = 0
    handle_news_analytics(NewsAnalyticsPayload(reason="manual"), None)
    assert News.objects.get(pk=news.pk).view_count == 7
