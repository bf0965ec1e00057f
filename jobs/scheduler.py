"""The public API for enqueueing jobs of any declared type. Every function returns job ids.

Called inside a transaction, nothing reaches Redis unless it commits: the ledger row is
written in the caller's transaction and the wake-up is pushed on commit.

Domain apps wrap these in named scheduling functions next to their job types
(news.jobs.schedule_news_publishing, wechat.jobs.schedule_wechat_draft_creation, ...)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from jobs import services
from jobs.payloads import Payload


def enqueue(job_type: str, payload: dict[str, Any] | Payload, *, run_at: datetime | None = None,
            delay: float | timedelta | None = None, unique_key: str | None = None,
            timeout: int | None = None, priority: int | None = None, expires_at: datetime | None = None,
            expires_in: float | timedelta | None = None) -> int:
    """Record a job of a registered type. Raises UnknownJobType / PayloadError (naming the
    field) / ValueError before anything is written. `timeout` overrides the type's.

    `priority` (-100 to 100, higher first; default the type's, else 0) orders due jobs of a
    queue. `expires_at` (an aware datetime) or `expires_in` (seconds or a timedelta after
    run_at; default the type's) is the deadline: a job not started by then ends `expired`
    and never runs."""
    return services.job_create(job_type=job_type, payload=payload, run_at=run_at, delay=delay,
                               unique_key=unique_key, timeout=timeout, priority=priority,
                               expires_at=expires_at, expires_in=expires_in)


def enqueue_many(job_type: str, payloads: list[dict[str, Any]], *, run_at: datetime | None = None,
                 delay: float | timedelta | None = None, priority: int | None = None,
                 expires_at: datetime | None = None, expires_in: float | timedelta | None = None) -> list[int]:
    """Many jobs of one type in one INSERT and one Redis round trip; returns their ids."""
    return services.job_create_many(job_type=job_type, payloads=payloads, run_at=run_at, delay=delay,
                                    priority=priority, expires_at=expires_at, expires_in=expires_in)


def cancel_unique(unique_key: str) -> bool:
    """Cancel the live job holding `unique_key` (a running one is released from the key)."""
    return services.job_cancel_unique(unique_key)
