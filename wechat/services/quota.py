"""WeChat's daily quotas reset at midnight Beijing time; our own budgets (freepublish/get
polls) are counted in Redis, shared by every worker, and reset with them."""

from __future__ import annotations

from datetime import datetime, time as dtime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from jobs import limits
from nextevent.redis import get_redis

QUOTA_TIME_ZONE = ZoneInfo("Asia/Shanghai")  # daily quotas reset at midnight Beijing time


def spend_daily_budget(api: str, budget: int) -> bool:
    """Count one call of `api` against our own daily budget, shared by every worker through
    Redis and reset with WeChat's quotas (midnight in Beijing). False: the budget is spent."""
    day = timezone.localtime(timezone.now(), QUOTA_TIME_ZONE).date().isoformat()
    # The project's one home for counters (jobs/limits.py); the key is the one used before.
    return limits.spend_budget(get_redis(), f"wechat:spent:{settings.WECHAT_APP_ID}:{api}:{day}", budget,
                               keep_seconds=2 * 24 * 3600)


def next_quota_reset(now: datetime | None = None) -> datetime:
    local = timezone.localtime(now or timezone.now(), QUOTA_TIME_ZONE)
    return datetime.combine(local.date() + timedelta(days=1), dtime(0, 1), tzinfo=QUOTA_TIME_ZONE)

