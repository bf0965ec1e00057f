"""Status changes of a News item. Each is one conditional UPDATE, so concurrent callers
cannot both win, and each is idempotent: repeating a finished change is a no-op."""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from news.models import News, NewsStatus
from news.signals import news_published

logger = logging.getLogger(__name__)


class NewsStateError(Exception):
    """The item is in a state from which the requested change is not allowed."""


class NewsNotFound(NewsStateError):
    pass


def _status_of(news_id: int) -> str:
    status = News.objects.filter(pk=news_id).values_list("status", flat=True).first()
    if status is None:
        raise NewsNotFound(f"news {news_id} does not exist")
    return status


def news_publish(*, news_id: int, now: datetime | None = None) -> bool:
    """Publish a draft or scheduled item now. Returns True if this call published it,
    False if it was already published. Refuses an archived item."""
    now = now or timezone.now()
    with transaction.atomic():
        won = News.objects.filter(
            pk=news_id, status__in=[NewsStatus.DRAFT, NewsStatus.SCHEDULED]
        ).update(status=NewsStatus.PUBLISHED, published_at=now, updated_at=now)
        if won:
            _after_publish(news_id)
            return True
    status = _status_of(news_id)
    if status == NewsStatus.PUBLISHED:
        return False
    raise NewsStateError(f"news {news_id} is {status}; only draft or scheduled news can be published")


def news_publish_scheduled(*, news_id: int, scheduled_at: datetime | None = None,
                           now: datetime | None = None) -> tuple[bool, str]:
    """Publish an item only if it is still scheduled and due (and, when given, still
    scheduled for `scheduled_at`). Returns (published, reason) so a stale job can say why."""
    now = now or timezone.now()
    filters = {"pk": news_id, "status": NewsStatus.SCHEDULED, "scheduled_at__lte": now}
    if scheduled_at is not None:
        filters["scheduled_at"] = scheduled_at
    with transaction.atomic():
        if News.objects.filter(**filters).update(
            status=NewsStatus.PUBLISHED, published_at=now, updated_at=now
        ):
            _after_publish(news_id)
            return True, "published"
    row = News.objects.filter(pk=news_id).values("status", "scheduled_at").first()
    if row is None:
        return False, "news item no longer exists"
    if row["status"] != NewsStatus.SCHEDULED:
        return False, f"news item is {row['status']}, not scheduled"
    if scheduled_at is not None and row["scheduled_at"] != scheduled_at:
        return False, f"news item was rescheduled to {row['scheduled_at'].isoformat()}"
    return False, f"news item is not due until {row['scheduled_at'].isoformat()}"


def news_archive(*, news_id: int, now: datetime | None = None) -> bool:
    """Archive a published item. True if this call archived it, False if already archived."""
    now = now or timezone.now()
    if News.objects.filter(pk=news_id, status=NewsStatus.PUBLISHED).update(
        status=NewsStatus.ARCHIVED, archived_at=now, updated_at=now
    ):
        return True
    status = _status_of(news_id)
    if status == NewsStatus.ARCHIVED:
        return False
    raise NewsStateError(f"news {news_id} is {status}; only published news can be archived")


def news_archive_expired(*, news_id: int, now: datetime | None = None) -> tuple[bool, str]:
    """Archive an item only if it is published and its expires_at has passed."""
    now = now or timezone.now()
    if News.objects.filter(
        pk=news_id, status=NewsStatus.PUBLISHED, expires_at__lte=now
    ).update(status=NewsStatus.ARCHIVED, archived_at=now, updated_at=now):
        return True, "archived"
    row = News.objects.filter(pk=news_id).values("status", "expires_at").first()
    if row is None:
        return False, "news item no longer exists"
    if row["status"] != NewsStatus.PUBLISHED:
        return False, f"news item is {row['status']}, not published"
    if row["expires_at"] is None:
        return False, "news item no longer has an expiry"
    return False, f"news item does not expire until {row['expires_at'].isoformat()}"


def _after_publish(news_id: int) -> None:
    news_published.send(sender=News, news_id=news_id)


def news_save(*, news: News) -> News:
    """Save an item and keep its jobs in step in one transaction: the post_save receiver
    (news/receivers.py) writes the jobs inside it, so both commit or neither does."""
    with transaction.atomic():
        news.save()
    return news
