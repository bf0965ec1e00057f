"""WeChat's error types (wechat/client.py) as the engine's outcomes: transient ones are
re-raised (retried with backoff), rate limits and quotas wait (Snooze), refusals are
PermanentError with the article marked failed."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from jobs.errors import PermanentError, Snooze
from wechat.client import WechatPermanentError, WechatQuotaExhausted, WechatRateLimited, WechatTransientError
from wechat.models import ArticleState, WechatArticle
from wechat.services.quota import next_quota_reset

logger = logging.getLogger("wechat.services")


@contextmanager
def as_job_errors(article: WechatArticle, *, permanent: bool = True):
    """WeChat's error types as the engine's outcomes. permanent=False leaves refusals and
    exhausted quotas to the caller (reconciliation decides what they mean)."""
    try:
        yield
    except WechatQuotaExhausted as exc:
        if not permanent:
            raise
        note(article, str(exc))
        raise Snooze(next_quota_reset(), str(exc)) from None
    except WechatRateLimited as exc:
        waits = article.rate_limit_waits + 1
        WechatArticle.objects.filter(pk=article.pk).update(rate_limit_waits=waits, last_error=str(exc)[:2000])
        if waits > settings.WECHAT_MAX_RATE_LIMIT_WAITS:
            raise PermanentError(f"{exc} (rate limited {waits} times; WECHAT_MAX_RATE_LIMIT_WAITS)") from None
        raise Snooze(timezone.now() + timedelta(seconds=settings.WECHAT_RATE_LIMIT_WAIT), str(exc)) from None
    except WechatPermanentError as exc:
        if not permanent:
            raise
        WechatArticle.objects.filter(pk=article.pk).exclude(state=ArticleState.PUBLISHED).update(
            state=ArticleState.FAILED, last_error=str(exc)[:2000])
        logger.error("wechat: news %s failed: %s", article.news_id, exc)
        raise PermanentError(str(exc)) from None
    except WechatTransientError as exc:
        note(article, str(exc))
        raise


def note(article: WechatArticle, message: str) -> None:
    WechatArticle.objects.filter(pk=article.pk).update(last_error=message[:2000])

