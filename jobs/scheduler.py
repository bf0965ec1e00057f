"""The public API for scheduling and enqueueing jobs. Every function returns the job id.

Called inside a transaction, nothing reaches Redis unless it commits: the ledger row is
written in the caller's transaction and the wake-up is pushed on commit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from jobs import services, types


def enqueue(job_type: str, payload: dict[str, Any] | types.Payload, *, run_at: datetime | None = None,
            delay: float | timedelta | None = None, unique_key: str | None = None,
            timeout: int | None = None) -> int:
    """Record a job of a registered type. Raises UnknownJobType / PayloadError (naming the
    field) / ValueError before anything is written. `timeout` overrides the type's."""
    return services.job_create(job_type=job_type, payload=payload, run_at=run_at, delay=delay,
                               unique_key=unique_key, timeout=timeout)


def enqueue_many(job_type: str, payloads: list[dict[str, Any]], *, run_at: datetime | None = None,
                 delay: float | timedelta | None = None) -> list[int]:
    """Many jobs of one type in one INSERT and one Redis round trip; returns their ids."""
    return services.job_create_many(job_type=job_type, payloads=payloads, run_at=run_at, delay=delay)


def news_publish_key(news_id: int) -> str:
    return f"{types.NEWS_SCHEDULED_PUBLISHER}:{news_id}"


def news_expiration_key(news_id: int) -> str:
    return f"{types.NEWS_EXPIRATION}:{news_id}"


def schedule_news_publishing(news_id: int, scheduled_at: datetime) -> int:
    """At most one live publishing job per item: a second call moves it to the new time."""
    return enqueue(types.NEWS_SCHEDULED_PUBLISHER,
                   {"news_id": news_id, "scheduled_at": scheduled_at, "retry_count": 0},
                   run_at=scheduled_at, unique_key=news_publish_key(news_id))


def unschedule_news_publishing(news_id: int) -> bool:
    return services.job_cancel_unique(news_publish_key(news_id))


def schedule_news_expiration(news_id: int, expires_at: datetime) -> int:
    return enqueue(types.NEWS_EXPIRATION, {"news_id": news_id, "expires_at": expires_at},
                   run_at=expires_at, unique_key=news_expiration_key(news_id))


def unschedule_news_expiration(news_id: int) -> bool:
    return services.job_cancel_unique(news_expiration_key(news_id))


def schedule_wechat_draft_creation(news_id: int, delay: float | timedelta = 0) -> int:
    return enqueue(types.WECHAT_DRAFT_CREATION, {"news_id": news_id, "retry_count": 0},
                   delay=delay, unique_key=f"{types.WECHAT_DRAFT_CREATION}:{news_id}")


def schedule_wechat_publishing(news_id: int, draft_id: str, delay: float | timedelta = 0) -> int:
    return enqueue(types.WECHAT_PUBLISHING, {"news_id": news_id, "draft_id": draft_id, "retry_count": 0},
                   delay=delay, unique_key=f"{types.WECHAT_PUBLISHING}:{news_id}")


def enqueue_news_analytics(news_id: int, event_type: str, user_id: int | str | None = None,
                           metadata: dict | None = None):
    """One analytics event. On the hot path, so it does not create a job: it appends to the
    analytics buffer in Redis, which `news:analytics` jobs drain in batches."""
    from analytics.ingest import record_event

    return record_event(news_id=news_id, event_type=event_type, user_id=user_id, metadata=metadata)
