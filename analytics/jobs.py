"""The analytics batch job and its periodic trigger, declared with their policies;
discovered at start-up by jobs.registry.autodiscover()."""

from __future__ import annotations

from analytics.scheduling import NEWS_ANALYTICS, NewsAnalyticsPayload, enqueue_analytics_batch
from analytics.services import analytics_process_batch
from jobs.registry import job_type, periodic


@job_type(NEWS_ANALYTICS, queue="analytics", timeout=300, max_retries=3, payload=NewsAnalyticsPayload,
          description="count buffered analytics events")
def handle_news_analytics(payload: NewsAnalyticsPayload, job) -> str:
    return analytics_process_batch(reason=payload.reason)


@periodic("analytics_batch", cron="*/5 * * * *", queue="analytics",
          description="every 5 minutes: enqueue the analytics batch job")
def analytics_enqueue_batch() -> str:
    job_id = enqueue_analytics_batch(reason="periodic", unique_key="news:analytics:periodic")
    return f"job {job_id}"
