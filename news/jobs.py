"""The news app's job types and periodic tasks, declared with their policies; discovered at
start-up by jobs.registry.autodiscover(). Handlers are thin: payload in, service call out."""

from __future__ import annotations

import logging

from django.db.models import Q
from django.utils import timezone

from jobs import clock
from jobs.models import Job
from jobs.registry import job_type, periodic
from news.models import News, NewsStatus
from news.scheduling import (
    NEWS_EXPIRATION,
    NEWS_SCHEDULED_PUBLISHER,
    NewsExpirationPayload,
    NewsPublishPayload,
    news_publish_key,
    schedule_news_publishing,
)
from news.services import news_archive_expired, news_publish_scheduled

logger = logging.getLogger(__name__)

SWEEP_BATCH = 500
SWEEP_MAX_PAGES = 40  # 20,000 due items looked at per run at most


@job_type(NEWS_SCHEDULED_PUBLISHER, queue="news", timeout=60, max_retries=3, payload=NewsPublishPayload,
          subject="news:{news_id}", description="publish a news item at its time")
def handle_news_scheduled_publisher(payload: NewsPublishPayload, job) -> str:
    # "Due" by the database's clock, as the dispatcher decided it (jobs/clock.py).
    published, reason = news_publish_scheduled(news_id=payload.news_id, scheduled_at=payload.scheduled_at,
                                               now=clock.now())
    if not published:
        logger.info("job %s: news %s not published: %s", job.pk, payload.news_id, reason)
    return reason


@job_type(NEWS_EXPIRATION, queue="news", timeout=60, max_retries=3, payload=NewsExpirationPayload,
          subject="news:{news_id}", description="archive a news item when it expires")
def handle_news_expiration(payload: NewsExpirationPayload, job) -> str:
    archived, reason = news_archive_expired(news_id=payload.news_id)
    if not archived:
        logger.info("job %s: news %s not archived: %s", job.pk, payload.news_id, reason)
    return reason


@periodic("news_publish_sweep", cron="* * * * *", queue="news",
          description="every minute: publish due scheduled news that has no live job")
def news_publish_sweep(limit: int = SWEEP_BATCH) -> str:
    """Due scheduled news with no live publishing job (missed by signals, e.g. after
    QuerySet.update(), or a crash between a bare save and its jobs) gets one now."""
    now = timezone.now()
    due = (News.objects.filter(status=NewsStatus.SCHEDULED, scheduled_at__lte=now)
           .order_by("scheduled_at", "pk").values_list("pk", "scheduled_at"))
    orphans: list[tuple[int, object]] = []
    last = None
    # Pages of due items, oldest first, until `limit` without a job are found: a backlog of
    # due items whose jobs wait in a busy queue must not hide the ones that have none. Each
    # page is checked with one lookup on the live jobs' unique key index. Bounded per run.
    for _ in range(SWEEP_MAX_PAGES):
        page_qs = due if last is None else due.filter(
            Q(scheduled_at__gt=last[1]) | Q(scheduled_at=last[1], pk__gt=last[0]))
        page = list(page_qs[:SWEEP_BATCH])
        if not page:
            break
        keys = {news_publish_key(pk): (pk, at) for pk, at in page}
        live = set(Job.objects.filter(live_key__in=list(keys)).values_list("live_key", flat=True))
        orphans += [item for key, item in keys.items() if key not in live]
        if len(orphans) >= limit or len(page) < SWEEP_BATCH:
            break
        last = page[-1]
    orphans = orphans[:limit]
    for pk, at in orphans:
        schedule_news_publishing(pk, at)
    if orphans:
        logger.warning("publish sweep: %d due item(s) had no live job: %s", len(orphans),
                       [pk for pk, _ in orphans[:50]])
    return f"{len(orphans)} enqueued"


@periodic("news_archive_sweep", cron="0 * * * *", queue="news", description="every hour: archive expired news")
def news_archive_sweep(limit: int = SWEEP_BATCH) -> str:
    now = timezone.now()
    ids = list(News.objects.filter(status=NewsStatus.PUBLISHED, expires_at__lte=now)
               .order_by("expires_at").values_list("pk", flat=True)[:limit])
    archived = sum(1 for pk in ids if news_archive_expired(news_id=pk, now=now)[0])
    return f"{archived} archived"
