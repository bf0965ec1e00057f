"""How to enqueue the news jobs: their names, payloads and the scheduling functions, and
keeping an item's jobs in step with its fields. The declarations with their policies and
handlers are in news/jobs.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone

from jobs.payloads import Payload, positive
from jobs.scheduler import cancel_unique, enqueue
from news.models import NewsStatus

NEWS_SCHEDULED_PUBLISHER = "news:scheduled_publisher"
NEWS_EXPIRATION = "news:expiration"


@dataclass
class NewsPublishPayload(Payload):
    news_id: int
    scheduled_at: datetime
    retry_count: int = 0

    def validate(self):
        positive("news_id", self.news_id)


@dataclass
class NewsExpirationPayload(Payload):
    news_id: int
    expires_at: datetime

    def validate(self):
        positive("news_id", self.news_id)


def news_publish_key(news_id: int) -> str:
    return f"{NEWS_SCHEDULED_PUBLISHER}:{news_id}"


def news_expiration_key(news_id: int) -> str:
    return f"{NEWS_EXPIRATION}:{news_id}"


def schedule_news_publishing(news_id: int, scheduled_at: datetime) -> int:
    """At most one live publishing job per item: a second call moves it to the new time."""
    return enqueue(NEWS_SCHEDULED_PUBLISHER,
                   {"news_id": news_id, "scheduled_at": scheduled_at, "retry_count": 0},
                   run_at=scheduled_at, unique_key=news_publish_key(news_id))


def unschedule_news_publishing(news_id: int) -> bool:
    return cancel_unique(news_publish_key(news_id))


def schedule_news_expiration(news_id: int, expires_at: datetime) -> int:
    return enqueue(NEWS_EXPIRATION, {"news_id": news_id, "expires_at": expires_at},
                   run_at=expires_at, unique_key=news_expiration_key(news_id))


def unschedule_news_expiration(news_id: int) -> bool:
    return cancel_unique(news_expiration_key(news_id))


def news_sync_jobs(*, news_id: int, status: str, scheduled_at: datetime | None,
                   expires_at: datetime | None) -> None:
    """Make the item's publishing and expiration jobs match its fields: schedule, move or
    cancel. Runs in the caller's transaction; wake-ups reach Redis only after it commits."""
    # The same moment arrives in the editor's zone (admin forms) or in UTC (read back from
    # the database); one form keeps an unchanged save from rewriting the job ("moved").
    scheduled_at = scheduled_at and scheduled_at.astimezone(dt_timezone.utc)
    expires_at = expires_at and expires_at.astimezone(dt_timezone.utc)
    if status == NewsStatus.SCHEDULED and scheduled_at is not None:
        schedule_news_publishing(news_id, scheduled_at)
    else:
        unschedule_news_publishing(news_id)
    if expires_at is not None and status in (NewsStatus.SCHEDULED, NewsStatus.PUBLISHED):
        schedule_news_expiration(news_id, expires_at)
    else:
        unschedule_news_expiration(news_id)


def news_cancel_jobs(*, news_id: int) -> None:
    unschedule_news_publishing(news_id)
    unschedule_news_expiration(news_id)
