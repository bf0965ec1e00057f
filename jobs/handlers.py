"""One handler per job type. A handler is thin: it takes the validated payload (ids and
scalars), calls the service that owns the rules, and returns a short result note.

Raise jobs.errors.PermanentError for what retrying cannot fix, Snooze to wait without
spending a retry; anything else is retried with backoff."""

from __future__ import annotations

import ast
import logging
import time

from django.utils.module_loading import import_string

from jobs.errors import PermanentError
from jobs.types import (
    NewsAnalyticsPayload,
    NewsExpirationPayload,
    NewsPublishPayload,
    NoopPayload,
    PeriodicPayload,
    WechatDraftPayload,
    WechatPublishPayload,
)

logger = logging.getLogger(__name__)


def handle_news_scheduled_publisher(payload: NewsPublishPayload, job) -> str:
    from jobs import clock
    from news.services import news_publish_scheduled

    # "Due" by the database's clock, as the dispatcher decided it (jobs/clock.py).
    published, reason = news_publish_scheduled(news_id=payload.news_id, scheduled_at=payload.scheduled_at,
                                               now=clock.now())
    if not published:
        logger.info("job %s: news %s not published: %s", job.pk, payload.news_id, reason)
    return reason


def handle_news_expiration(payload: NewsExpirationPayload, job) -> str:
    from news.services import news_archive_expired

    archived, reason = news_archive_expired(news_id=payload.news_id)
    if not archived:
        logger.info("job %s: news %s not archived: %s", job.pk, payload.news_id, reason)
    return reason


def handle_wechat_draft_creation(payload: WechatDraftPayload, job) -> str:
    from wechat.services import wechat_draft_create

    return wechat_draft_create(news_id=payload.news_id)


def handle_wechat_publishing(payload: WechatPublishPayload, job) -> str:
    from wechat.services import wechat_publish

    return wechat_publish(news_id=payload.news_id, draft_id=payload.draft_id)


def handle_news_analytics(payload: NewsAnalyticsPayload, job) -> str:
    from analytics.services import analytics_process_batch

    return analytics_process_batch(reason=payload.reason)


def handle_system_periodic(payload: PeriodicPayload, job) -> str:
    """Run one slot of a django-q2 Schedule row: its func with its args and kwargs."""
    try:
        func = import_string(payload.func)
        args = ast.literal_eval(payload.args) if payload.args else ()
        kwargs = ast.literal_eval(payload.kwargs) if payload.kwargs else {}
    except (ImportError, ValueError, SyntaxError) as exc:
        raise PermanentError(f"schedule {payload.name!r}: cannot load {payload.func!r}: {exc}") from exc
    if not isinstance(args, tuple):
        args = (args,)
    if not isinstance(kwargs, dict):
        raise PermanentError(f"schedule {payload.name!r}: kwargs must be a dict literal")
    result = func(*args, **kwargs)
    return "" if result is None else str(result)


def handle_system_noop(payload: NoopPayload, job) -> str:
    if payload.marker:
        # Demos and tests watch this list to see every run of every attempt.
        from nextevent.redis import get_redis

        get_redis().rpush(f"nextevent:noop:{payload.marker}", f"{job.pk}:{job.attempts}")
    if payload.sleep:
        time.sleep(payload.sleep)
    if job.attempts <= payload.fail_times:
        if payload.permanent:
            raise PermanentError(f"demo permanent failure (attempt {job.attempts})")
        raise RuntimeError(f"demo failure {job.attempts} of {payload.fail_times}")
    return payload.marker or "ok"
