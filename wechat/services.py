"""Pushing a published news item to the WeChat Official Account: draft, submit, follow.

Two jobs carry an item (jobs run at least once, so both are written to run again safely):
- `wechat:draft_creation` uploads the cover and content images (each recorded as soon as
  WeChat returns it), creates the draft and, in the transaction that records it, enqueues
- `wechat:publishing`, which submits the draft once and then follows it: the PUBLISHJOBFINISH
  push (wechat/views.py) settles it at once; polling freepublish/get, sparingly, is the fallback.

WeChat errors reach here as the client's types and leave as the engine's: transient ones are
re-raised (retried with backoff), rate limits and quotas wait (Snooze), refusals are
PermanentError with the article marked failed.
"""

from __future__ import annotations

import html
import logging
import posixpath
import re
from contextlib import contextmanager
from datetime import datetime, time as dtime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs import scheduler
from jobs.errors import PermanentError, Snooze
from jobs.models import Job, JobState
from jobs.types import WECHAT_PUBLISHING
from news.models import News
from wechat.client import (
    Upload,
    WechatClient,
    WechatError,
    WechatOutcomeUnknown,
    WechatPermanentError,
    WechatQuotaExhausted,
    WechatRateLimited,
    WechatTransientError,
)
from wechat.models import ArticleState, WechatArticle

logger = logging.getLogger(__name__)

WECHAT_IMAGE_HOST = "mmbiz.qpic.cn"  # images already on WeChat stay as they are
COVER_EXTENSIONS = {"bmp", "png", "jpeg", "jpg", "gif"}
COVER_MAX_BYTES = 10 * 1024 * 1024
CONTENT_IMAGE_TYPES = {"image/jpeg": "jpg", "image/png": "png"}
CONTENT_MAX_BYTES = 1_000_000
QUOTA_TIME_ZONE = ZoneInfo("Asia/Shanghai")  # daily quotas reset at midnight Beijing time
PUBLISH_STATUS = {0: "published", 1: "publishing", 2: "original-content check failed", 3: "publishing failed",
                  4: "platform audit failed", 5: "deleted after publishing", 6: "banned after publishing"}
_IMG_SRC = re.compile(r"""(<img\b[^>]*?\ssrc\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


# ---------------------------------------------------------------- starting


def wechat_on_news_published(news_id: int) -> None:
    """news.services publish hook; runs inside the publishing transaction."""
    if News.objects.filter(pk=news_id, push_to_wechat=True).exists():
        wechat_push(news_id=news_id)


def wechat_push(*, news_id: int) -> bool:
    """Start an item's way to WeChat. False if it is already on its way (or there)."""
    with transaction.atomic():
        _, created = WechatArticle.objects.get_or_create(news_id=news_id)
        if created:
            scheduler.schedule_wechat_draft_creation(news_id)
    return created


# ---------------------------------------------------------------- the draft


def wechat_draft_create(*, news_id: int) -> str:
    article = WechatArticle.objects.select_related("news").filter(news_id=news_id).first()
    if article is None:
        logger.info("wechat draft: news %s has no WeChat article (deleted?); nothing to do", news_id)
        return "no WeChat article for this news item"
    if article.state != ArticleState.PENDING:
        return f"draft already created (article is {article.state})"
    news = article.news
    with _as_job_errors(article):
        _check_fields(news)  # before any upload: a refused draft must not cost quota
        client = WechatClient.from_settings()
        thumb = _cover_media_id(client, article, news)
        content = _rewrite_content_images(client, article, news.content)
        _check_content(content)
        media_id = client.add_draft([_draft_article(news, content=content, thumb_media_id=thumb)])
    with transaction.atomic():
        won = WechatArticle.objects.filter(pk=article.pk, state=ArticleState.PENDING).update(
            state=ArticleState.DRAFTED, draft_media_id=media_id, drafted_at=timezone.now(), last_error="")
        if won and settings.WECHAT_AUTO_PUBLISH:
            scheduler.schedule_wechat_publishing(news_id, media_id)
    if not won:
        # Another attempt (a lease taken over) recorded its draft first: drop ours.
        logger.warning("wechat draft: news %s already has a draft; deleting duplicate %s", news_id, media_id)
        try:
            client.delete_draft(media_id)
        except WechatError as exc:
            logger.warning("wechat draft: could not delete duplicate draft %s: %s", media_id, exc)
        return "draft already created by another attempt"
    logger.info("wechat draft: news %s -> draft %s", news_id, media_id)
    return f"draft {media_id}" + ("" if settings.WECHAT_AUTO_PUBLISH else " (WECHAT_AUTO_PUBLISH is off)")


def _check_fields(news: News) -> None:
    limits = [("title", news.title, settings.WECHAT_TITLE_MAX_CHARS),
              ("author", news.author, settings.WECHAT_AUTHOR_MAX_CHARS),
              ("digest", news.digest, settings.WECHAT_DIGEST_MAX_CHARS)]
    if not news.title.strip():
        raise WechatPermanentError("title: is empty; WeChat requires one")
    for name, value, limit in limits:
        if len(value) > limit:
            raise WechatPermanentError(f"{name}: {len(value)} characters; WeChat takes at most {limit} "
                                       f"(WECHAT_{name.upper()}_MAX_CHARS)")


def _check_content(content: str) -> None:
    if not content.strip():
        raise WechatPermanentError("content: is empty; WeChat requires it")
    if len(content) > settings.WECHAT_CONTENT_MAX_CHARS or len(content.encode()) >= CONTENT_MAX_BYTES:
        raise WechatPermanentError(f"content: {len(content)} characters / {len(content.encode())} bytes; WeChat "
                                   f"takes fewer than {settings.WECHAT_CONTENT_MAX_CHARS} characters and 1 MB")


def _draft_article(news: News, *, content: str, thumb_media_id: str) -> dict:
    article = {"article_type": "news", "title": news.title, "content": content,
               "thumb_media_id": thumb_media_id, "need_open_comment": 0, "only_fans_can_comment": 0}
    if news.author:
        article["author"] = news.author
    if news.digest:  # empty: WeChat takes the start of the content
        article["digest"] = news.digest
    return article


def _cover_media_id(client: WechatClient, article: WechatArticle, news: News) -> str:
    if article.thumb_media_id:
        return article.thumb_media_id
    if not news.cover_image:
        if settings.WECHAT_DEFAULT_THUMB_MEDIA_ID:
            return settings.WECHAT_DEFAULT_THUMB_MEDIA_ID
        raise WechatPermanentError("cover_image: the item has none and WECHAT_DEFAULT_THUMB_MEDIA_ID is not set; "
                                   "a WeChat draft needs a cover")
    name = posixpath.basename(news.cover_image.name)
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in COVER_EXTENSIONS:
        raise WechatPermanentError(f"cover_image: {name!r} is not one of {', '.join(sorted(COVER_EXTENSIONS))}")
    try:
        with news.cover_image.open("rb") as f:
            data = f.read(COVER_MAX_BYTES + 1)
    except OSError as exc:
        raise WechatPermanentError(f"cover_image: cannot read {news.cover_image.name!r}: {exc}") from None
    if len(data) > COVER_MAX_BYTES:
        raise WechatPermanentError("cover_image: larger than 10 MB, the most WeChat takes")
    media_id = client.add_image_material(Upload(name, data))
    # Recorded at once: permanent material is counted, a retry must not upload it again.
    WechatArticle.objects.filter(pk=article.pk).update(thumb_media_id=media_id)
    article.thumb_media_id = media_id
    return media_id


def _rewrite_content_images(client: WechatClient, article: WechatArticle, content: str) -> str:
    """WeChat strips images from other hosts: upload each and point the content at WeChat's copy."""
    uploaded = dict(article.content_images or {})
    for src in dict.fromkeys(m.group(3) for m in _IMG_SRC.finditer(content)):
        if src in uploaded or urlsplit(html.unescape(src)).hostname == WECHAT_IMAGE_HOST:
            continue
        uploaded[src] = client.upload_article_image(_fetch_image(html.unescape(src)))
        WechatArticle.objects.filter(pk=article.pk).update(content_images=uploaded)
    article.content_images = uploaded
    return _IMG_SRC.sub(lambda m: m.group(1) + m.group(2) + uploaded.get(m.group(3), m.group(3)) + m.group(2),
                        content)


def _fetch_image(url: str) -> Upload:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WechatPermanentError(f"content image {url[:200]!r}: only absolute http(s) URLs can be uploaded")
    limit = settings.WECHAT_IMAGE_MAX_BYTES
    try:
        with requests.get(url, stream=True, timeout=(settings.WECHAT_CONNECT_TIMEOUT,
                                                     settings.WECHAT_READ_TIMEOUT)) as response:
            if 400 <= response.status_code < 500:
                raise WechatPermanentError(f"content image {url}: HTTP {response.status_code}")
            response.raise_for_status()
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind not in CONTENT_IMAGE_TYPES:
                raise WechatPermanentError(f"content image {url}: type {kind or 'unknown'!r}; WeChat takes JPEG or PNG")
            data = bytearray()
            for chunk in response.iter_content(64 * 1024):
                data += chunk
                if len(data) > limit:
                    raise WechatPermanentError(f"content image {url}: larger than {limit} bytes "
                                               "(WECHAT_IMAGE_MAX_BYTES)")
    except requests.RequestException as exc:
        raise WechatTransientError(f"content image {url}: {type(exc).__name__}: {exc}") from None
    name = posixpath.basename(parts.path).rsplit(".", 1)[0] or "image"
    return Upload(f"{name[:50]}.{CONTENT_IMAGE_TYPES[kind]}", bytes(data), kind)


# ---------------------------------------------------------------- submitting and following


def wechat_publish(*, news_id: int, draft_id: str) -> str:
    article = WechatArticle.objects.filter(news_id=news_id).first()
    if article is None:
        logger.info("wechat publish: news %s has no WeChat article (deleted?); nothing to do", news_id)
        return "no WeChat article for this news item"
    if article.draft_media_id != draft_id:
        logger.info("wechat publish: news %s job for draft %s is stale (article has %r)", news_id, draft_id,
                    article.draft_media_id)
        return "stale: the article has another draft"
    if article.state == ArticleState.DRAFTED:
        return _submit(article)
    if article.state == ArticleState.SUBMITTING:
        # We hold this job, so the attempt that set SUBMITTING is gone (crashed, or its lease
        # was taken over) and nobody knows whether WeChat accepted its submit.
        _mark_unknown(article, "an earlier attempt stopped during freepublish/submit")
    if article.state == ArticleState.PUBLISHING:
        return _poll(article)
    return f"article is {article.state}; nothing to do"


def _submit(article: WechatArticle) -> str:
    claimed = WechatArticle.objects.filter(pk=article.pk, state=ArticleState.DRAFTED).update(
        state=ArticleState.SUBMITTING, submitted_at=timezone.now())
    if not claimed:
        return "another attempt is submitting this draft"
    with _as_job_errors(article):
        client = WechatClient.from_settings()
        try:
            publish_id = client.submit_publish(article.draft_media_id)
        except WechatOutcomeUnknown as exc:
            _mark_unknown(article, str(exc))
        except WechatError:
            # WeChat answered with an error: the draft was not accepted; back to submittable.
            WechatArticle.objects.filter(pk=article.pk, state=ArticleState.SUBMITTING).update(
                state=ArticleState.DRAFTED)
            raise
    # UNKNOWN too: if this worker was thought dead but its call did go through, record it.
    WechatArticle.objects.filter(pk=article.pk, state__in=[ArticleState.SUBMITTING, ArticleState.UNKNOWN]).update(
        state=ArticleState.PUBLISHING, publish_id=publish_id, last_error="")
    logger.info("wechat publish: news %s draft %s submitted as publish %s", article.news_id,
                article.draft_media_id, publish_id)
    raise Snooze(timezone.now() + timedelta(seconds=settings.WECHAT_POLL_FIRST),
                 f"submitted as publish {publish_id}; waiting for WeChat to publish")


def _mark_unknown(article: WechatArticle, why: str):
    message = (f"freepublish/submit outcome unknown ({why}). Submitting again could publish twice: check the "
               "account's publish records, then in the admin use 'it was published' or 'it was not published'")
    WechatArticle.objects.filter(pk=article.pk, state=ArticleState.SUBMITTING).update(
        state=ArticleState.UNKNOWN, last_error=message[:2000])
    logger.error("wechat publish: news %s: %s", article.news_id, message)
    raise PermanentError(message)


def _poll(article: WechatArticle) -> str:
    if article.polls >= settings.WECHAT_MAX_POLLS:
        # Left in PUBLISHING: a late PUBLISHJOBFINISH push can still settle it.
        raise PermanentError(f"publish {article.publish_id} still not settled after {article.polls} polls "
                             "(WECHAT_MAX_POLLS)")
    WechatArticle.objects.filter(pk=article.pk).update(polls=F("polls") + 1)
    with _as_job_errors(article):
        data = WechatClient.from_settings().get_publish_status(article.publish_id)
    detail = data.get("article_detail") or {}
    state = _apply_publish_result(
        article.publish_id, status=int(data.get("publish_status", -1)), article_id=str(data.get("article_id") or ""),
        urls=[item.get("article_url", "") for item in detail.get("item") or []], fail_idx=data.get("fail_idx") or [])
    if state is None:  # still publishing
        wait = min(settings.WECHAT_POLL_FIRST * 2 ** (article.polls + 1), settings.WECHAT_POLL_MAX_INTERVAL)
        raise Snooze(timezone.now() + timedelta(seconds=wait), f"publish {article.publish_id} still in progress")
    if state == ArticleState.FAILED:
        article.refresh_from_db(fields=["last_error"])
        raise PermanentError(article.last_error)
    return f"published: {article.publish_id}"


def _apply_publish_result(publish_id: str, *, status: int, article_id: str, urls: list[str],
                          fail_idx: list) -> str | None:
    """Record a settled publish (from polling or the push). Returns the new state, None while
    WeChat is still publishing. A second report of the same outcome changes nothing."""
    if status == 1:
        return None
    meaning = PUBLISH_STATUS.get(status, f"unknown publish_status {status}")
    live = WechatArticle.objects.filter(publish_id=publish_id, state=ArticleState.PUBLISHING)
    if status == 0:
        live.update(state=ArticleState.PUBLISHED, article_id=article_id, article_url=(urls or [""])[0][:1024],
                    publish_status=0, published_at=timezone.now(), last_error="")
        return ArticleState.PUBLISHED
    failed = f"; failed articles (idx from 1): {fail_idx}" if fail_idx else ""
    message = f"publish {publish_id}: {meaning} (publish_status {status}){failed}"
    # 5 and 6 arrive after success: the article was there and is no more.
    WechatArticle.objects.filter(publish_id=publish_id, state__in=[ArticleState.PUBLISHING, ArticleState.PUBLISHED]
                                 ).update(state=ArticleState.FAILED, publish_status=status, last_error=message)
    return ArticleState.FAILED


def wechat_publish_event(*, publish_id: str, status: int, article_id: str = "", urls: list[str] = (),
                         fail_idx: list = ()) -> str | None:
    """A PUBLISHJOBFINISH push. Settles the article and wakes its waiting job, which then
    finds nothing left to do, so the ledger shows the outcome now rather than at the next poll."""
    article = WechatArticle.objects.filter(publish_id=publish_id).first()
    if article is None:
        logger.info("wechat event: publish %s is not one of ours", publish_id)
        return None
    state = _apply_publish_result(publish_id, status=status, article_id=article_id, urls=list(urls),
                                  fail_idx=list(fail_idx))
    if state is not None and Job.objects.filter(job_type=WECHAT_PUBLISHING, news_id=article.news_id,
                                                state=JobState.SCHEDULED).exists():
        scheduler.schedule_wechat_publishing(article.news_id, article.draft_media_id)
    logger.info("wechat event: publish %s of news %s -> %s", publish_id, article.news_id, state or "publishing")
    return state


# ---------------------------------------------------------------- errors


@contextmanager
def _as_job_errors(article: WechatArticle):
    try:
        yield
    except WechatQuotaExhausted as exc:
        _note(article, str(exc))
        raise Snooze(next_quota_reset(), str(exc)) from None
    except WechatRateLimited as exc:
        waits = article.rate_limit_waits + 1
        WechatArticle.objects.filter(pk=article.pk).update(rate_limit_waits=waits, last_error=str(exc)[:2000])
        if waits > settings.WECHAT_MAX_RATE_LIMIT_WAITS:
            raise PermanentError(f"{exc} (rate limited {waits} times; WECHAT_MAX_RATE_LIMIT_WAITS)") from None
        raise Snooze(timezone.now() + timedelta(seconds=settings.WECHAT_RATE_LIMIT_WAIT), str(exc)) from None
    except WechatPermanentError as exc:
        WechatArticle.objects.filter(pk=article.pk).exclude(state=ArticleState.PUBLISHED).update(
            state=ArticleState.FAILED, last_error=str(exc)[:2000])
        logger.error("wechat: news %s failed: %s", article.news_id, exc)
        raise PermanentError(str(exc)) from None
    except WechatTransientError as exc:
        _note(article, str(exc))
        raise


def _note(article: WechatArticle, message: str) -> None:
    WechatArticle.objects.filter(pk=article.pk).update(last_error=message[:2000])


def next_quota_reset(now: datetime | None = None) -> datetime:
    local = timezone.localtime(now or timezone.now(), QUOTA_TIME_ZONE)
    return datetime.combine(local.date() + timedelta(days=1), dtime(0, 1), tzinfo=QUOTA_TIME_ZONE)


# ---------------------------------------------------------------- people


def wechat_retry(*, news_id: int) -> str:
    """Admin "retry": resume an article that stopped. A failed one starts over with a new
    draft from the item's current content (the usual fix is an edit); uploads are reused."""
    with transaction.atomic():
        article = WechatArticle.objects.select_for_update().get(news_id=news_id)
        if article.state in (ArticleState.PUBLISHED, ArticleState.UNKNOWN, ArticleState.SUBMITTING):
            return f"news {news_id}: not retried, article is {article.state}"
        if article.state == ArticleState.FAILED:
            WechatArticle.objects.filter(pk=article.pk).update(
                state=ArticleState.PENDING, draft_media_id="", publish_id="", article_id="", article_url="",
                publish_status=None, polls=0, rate_limit_waits=0)
            article.state = ArticleState.PENDING
        if article.state == ArticleState.PENDING:
            scheduler.schedule_wechat_draft_creation(news_id)
            return f"news {news_id}: draft creation queued"
        WechatArticle.objects.filter(pk=article.pk).update(polls=0, rate_limit_waits=0)
        scheduler.schedule_wechat_publishing(news_id, article.draft_media_id)
        return f"news {news_id}: publishing queued ({article.state})"


def wechat_resolve_unknown(*, news_id: int, published: bool) -> bool:
    """A person checked the account after an unknown submit outcome."""
    with transaction.atomic():
        article = WechatArticle.objects.select_for_update().filter(news_id=news_id, state=ArticleState.UNKNOWN).first()
        if article is None:
            return False
        if published:
            WechatArticle.objects.filter(pk=article.pk).update(
                state=ArticleState.PUBLISHED, published_at=timezone.now(),
                last_error="marked published by a person after an unknown submit outcome")
        else:
            WechatArticle.objects.filter(pk=article.pk).update(state=ArticleState.DRAFTED, rate_limit_waits=0)
            scheduler.schedule_wechat_publishing(news_id, article.draft_media_id)
    return True
