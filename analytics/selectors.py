"""Reads for the admin and for anyone asking "how did this item do"."""

from __future__ import annotations

from datetime import date, timedelta

from django.db.models import Count
from django.utils import timezone

from analytics.ingest import EVENT_TYPES
from analytics.models import DailyStat, DailyUser


def news_daily_stats(*, news_id: int, days: int = 30, today: date | None = None) -> list[dict]:
    """One dict per day with events, newest first: {"day", <event type>: n..., "unique_users"}."""
    today = today or timezone.localdate()
    since = today - timedelta(days=days - 1)
    rows: dict[date, dict] = {}
    for day, event_type, count in (DailyStat.objects.filter(news_id=news_id, day__gte=since)
                                   .values_list("day", "event_type", "count")):
        rows.setdefault(day, {"day": day, **dict.fromkeys(EVENT_TYPES, 0), "unique_users": 0})[event_type] = count
    for row in (DailyUser.objects.filter(news_id=news_id, day__gte=since).values("day").order_by()
                .annotate(n=Count("user_id"))):
        rows.setdefault(row["day"], {"day": row["day"], **dict.fromkeys(EVENT_TYPES, 0)})["unique_users"] = row["n"]
    return sorted(rows.values(), key=lambda r: r["day"], reverse=True)


def unique_users(*, news_id: int, day: date) -> int:
    return DailyUser.objects.filter(news_id=news_id, day=day).count()


def top_news_by_views(*, day: date | None = None, limit: int = 20) -> list[tuple[int, int]]:
    """[(news_id, views)] for the day (today in TIME_ZONE by default), most viewed first."""
    day = day or timezone.localdate()
    return list(DailyStat.objects.filter(day=day, event_type="view").order_by("-count", "news_id")
                .values_list("news_id", "count")[:limit])
