"""The analytics batch job and its periodic trigger, declared with their policies;
discovered at start-up by jobs.registry.autodiscover()."""

from __future__ import annotations

from analytics.scheduling import NEWS_ANALYTICS, NewsAnalyticsPayload, enqueue_analytics_batch
from django.utils import timezone

from analytics.services import BUSY_RETRY_AFTER, ApplyLockBusy, analytics_process_batch
from jobs.errors import Snooze
from jobs.registry import job_type, periodic


@job_type(NEWS_ANALYTICS, queue="analytics", timeout=300, max_retries=3, payload=NewsAnalyticsPayload,
          description="count buffered analytics events")
def handle_news_analytics(payload: NewsAnalyticsPayload, job) -> str:
    try:
        return analytics_process_batch(reason=payload.reason)
    except ApplyLockBusy as busy:
        # Waiting without spending a retry: a host frozen mid-chunk holds the lock for as long
        # as it is frozen, and its entries are taken over once it is gone or done.
        raise Snooze(timezone.now() + BUSY_RETRY_AFTER, str(busy)) from None


@periodic("analytics_batch", cron="*/5 * * * *", queue="analytics",
          description="every 5 minutes: enqueue the analytics batch job")
def analytics_enqueue_batch() -> str:
    job_id = enqueue_analytics_batch(reason="periodic", unique_key="news:analytics:periodic")
    return f"job {job_id}"
