"""The draft: `wechat:draft_creation` puts the cover and content images on WeChat (each
image once), creates the draft once (a hidden marker lets a re-run find a draft whose
draft/add answer was lost) and, in the transaction that records it, enqueues publishing.

What WeChat forgot (material or a draft deleted in the account's console) is made again,
once: a cover or content image refused at draft/add (40007) is uploaded again and draft/add
retried in the same run; a draft refused at freepublish/submit (40007) gets a new draft
(`draft_again`). A second refusal is permanent."""

from __future__ import annotations

import logging
import secrets

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from news.models import News
from wechat.client import WechatClient, WechatError, WechatOutcomeUnknown, WechatPermanentError
from wechat.models import ArticleState, WechatArticle
from wechat.scheduling import schedule_wechat_draft_creation, schedule_wechat_publishing
from wechat.services.errors import as_job_errors
from wechat.services.media import cover_media_id, forget_uploads, upload_content_images
from wechat.services.records import CLOCK_SLACK, is_ours, pages

logger = logging.getLogger("wechat.services")

CONTENT_MAX_BYTES = 1_000_000


def wechat_on_news_published(news_id: int) -> None:
    """news.services publish hook; runs inside the publishing transaction. Without an app
    configured nothing is queued: a job that could only go dead would page someone."""
    if not News.objects.filter(pk=news_id, push_to_wechat=True).exists():
        return
    if not (settings.WECHAT_APP_ID and settings.WECHAT_APP_SECRET):
        logger.info("news %s not sent to WeChat: WECHAT_APP_ID / WECHAT_APP_SECRET are not set", news_id)
        return
    wechat_push(news_id=news_id)


def wechat_push(*, news_id: int) -> bool:
    """Start an item's way to WeChat. False if it is already on its way (or there)."""
    with transaction.atomic():
        _, created = WechatArticle.objects.get_or_create(news_id=news_id)
        if created:
            schedule_wechat_draft_creation(news_id)
    return created


def _article_for_draft(news_id: int) -> WechatArticle | None:
    article = WechatArticle.objects.select_related("news").filter(news_id=news_id).first()
    if article is None and News.objects.filter(pk=news_id, push_to_wechat=True).exists():
        # A draft job enqueued directly (schedule_wechat_draft_creation, the demo
        # command) rather than through the publish hook: the item still wants WeChat.
        WechatArticle.objects.get_or_create(news_id=news_id)
        article = WechatArticle.objects.select_related("news").get(news_id=news_id)
    return article


def wechat_draft_create(*, news_id: int) -> str:
    article = _article_for_draft(news_id)
    if article is None:
        logger.info("wechat draft: news %s has no WeChat article and is not marked for WeChat; nothing to do",
                    news_id)
        return "no WeChat article for this news item"
    if article.state != ArticleState.PENDING:
        return f"draft already created (article is {article.state})"
    news = article.news
    adopted = False
    with as_job_errors(article):
        _check_fields(news)  # before any upload: a refused draft must not cost quota
        client = WechatClient.from_settings()
        marker = _draft_marker(article)
        media_id = None
        if article.draft_requested_at is not None:
            # An earlier attempt sent draft/add and never recorded the answer (it died, or
            # the answer was lost): WeChat may hold that draft already.
            media_id = _find_draft(client, article)
            adopted = media_id is not None
        if media_id is None:
            media_id = _add_draft(client, article, news, marker)
    with transaction.atomic():
        won = WechatArticle.objects.filter(pk=article.pk, state=ArticleState.PENDING).update(
            state=ArticleState.DRAFTED, draft_media_id=media_id, drafted_at=timezone.now(), draft_requested_at=None,
            last_error="")
        if won and settings.WECHAT_AUTO_PUBLISH:
            schedule_wechat_publishing(news_id, media_id)
    if not won:
        return _lost_the_draft_race(client, article, media_id)
    how = "found in the draft box after a lost answer" if adopted else "created"
    logger.info("wechat draft: news %s -> draft %s (%s)", news_id, media_id, how)
    return f"draft {media_id}" + (" (found in the draft box: draft/add had been accepted)" if adopted else "") + (
        "" if settings.WECHAT_AUTO_PUBLISH else " (WECHAT_AUTO_PUBLISH is off)")


def _add_draft(client: WechatClient, article: WechatArticle, news: News, marker: str) -> str:
    for attempt in (1, 2):
        thumb = cover_media_id(client, article, news)
        content = upload_content_images(client, article, news.content)
        # The marker is an HTML comment: invisible to readers, kept in the draft's content.
        content = f"{content}\n<!--{marker}-->"
        _check_content(content)
        payload = _draft_article(news, content=content, thumb_media_id=thumb)
        # Recorded before sending: from here until the answer is stored, a re-run must look first.
        WechatArticle.objects.filter(pk=article.pk, state=ArticleState.PENDING).update(
            draft_requested_at=timezone.now())
        try:
            return client.add_draft([payload])
        except WechatOutcomeUnknown:
            raise  # maybe created: the next attempt looks for the marker
        except WechatError as exc:
            # WeChat answered with a refusal: nothing was created, nothing to look for.
            WechatArticle.objects.filter(pk=article.pk, state=ArticleState.PENDING).update(draft_requested_at=None)
            if exc.errcode != 40007:
                raise
            if attempt == 1 and forget_uploads(article, thumb):
                logger.warning("wechat draft: news %s: %s; uploading the cover and content images again", news.pk,
                               exc)
                continue
            why = ("after uploading the cover and content images again" if attempt == 2 else
                   "and none of its media ids is an upload of ours to make again (WECHAT_DEFAULT_THUMB_MEDIA_ID, "
                   "or an image already on WeChat in the content?)")
            raise WechatPermanentError(f"{exc} ({why})", errcode=exc.errcode, api=exc.api) from None
    raise AssertionError("unreachable")


def draft_again(*, article: WechatArticle, why: str) -> bool:
    """freepublish/submit refused the draft with 40007: WeChat no longer has it (deleted from
    the draft box). That refusal was an answer, so nothing was published and a new draft of
    the item is safe to submit. Once per article: False if it was made again before."""
    with transaction.atomic():
        moved = WechatArticle.objects.filter(
            pk=article.pk, state=ArticleState.DRAFTED, publish_id="", draft_media_id=article.draft_media_id,
            redrafts=0).update(
            state=ArticleState.PENDING, redrafts=1, draft_media_id="", draft_requested_at=None, drafted_at=None,
            submitted_at=None, waiting_since=None, last_error=f"{why}: making a new draft"[:2000])
        if moved:
            schedule_wechat_draft_creation(article.news_id)
    if moved:
        logger.warning("wechat publish: news %s: draft %s is no longer at WeChat (%s); making a new draft",
                       article.news_id, article.draft_media_id, why)
    return bool(moved)


def _lost_the_draft_race(client: WechatClient, article: WechatArticle, media_id: str) -> str:
    # Two attempts ran at once (a lease taken over from a frozen worker) and both created a
    # draft; the other recorded its own first. Ours is unused: remove it, best effort.
    recorded = WechatArticle.objects.filter(pk=article.pk).values_list("draft_media_id", flat=True).first()
    if recorded == media_id:
        return "draft already recorded by another attempt"
    logger.warning("wechat draft: news %s already has draft %s; deleting duplicate %s", article.news_id,
                   recorded, media_id)
    try:
        client.delete_draft(media_id)
    except WechatError as exc:
        logger.warning("wechat draft: could not delete duplicate draft %s: %s", media_id, exc)
    return "draft already created by another attempt"


def _draft_marker(article: WechatArticle) -> str:
    if not article.draft_marker:
        # The article's id and generation, plus a random part: two installations sharing one
        # account (staging, production) must not take each other's drafts.
        marker = f"nextevent-wechat:{article.pk}:{article.generation}:{secrets.token_hex(4)}"
        WechatArticle.objects.filter(pk=article.pk, draft_marker="").update(draft_marker=marker)
        article.refresh_from_db(fields=["draft_marker"])
    return article.draft_marker


def _find_draft(client: WechatClient, article: WechatArticle) -> str | None:
    """The media_id of the draft an earlier attempt created, from the newest pages of the box."""
    since = article.draft_requested_at - CLOCK_SLACK
    for item in pages(client.list_drafts):
        if is_ours(item, article, since=since):
            logger.warning("wechat draft: news %s: draft/add had been accepted; adopting draft %s",
                           article.news_id, item.get("media_id"))
            return str(item["media_id"])
    return None


def _check_fields(news: News) -> None:
    """Characters and UTF-8 bytes: the docs count characters, practitioners hit errors at byte
    counts, so both limits apply (the fake enforces the same, devtools/wechat_fake.py LIMITS)."""
    limits = [("title", news.title, settings.WECHAT_TITLE_MAX_CHARS, settings.WECHAT_TITLE_MAX_BYTES),
              ("author", news.author, settings.WECHAT_AUTHOR_MAX_CHARS, settings.WECHAT_AUTHOR_MAX_BYTES),
              ("digest", news.digest, settings.WECHAT_DIGEST_MAX_CHARS, settings.WECHAT_DIGEST_MAX_BYTES)]
    if not news.title.strip():
        raise WechatPermanentError("title: is empty; WeChat requires one")
    for name, value, chars, size in limits:
        if len(value) > chars:
            raise WechatPermanentError(f"{name}: {len(value)} characters; WeChat takes at most {chars} "
                                       f"(WECHAT_{name.upper()}_MAX_CHARS)")
        if len(value.encode()) > size:
            raise WechatPermanentError(f"{name}: {len(value.encode())} bytes in UTF-8; WeChat takes at most {size} "
                                       f"(WECHAT_{name.upper()}_MAX_BYTES)")


def _check_content(content: str) -> None:
    if not content.strip():
        raise WechatPermanentError("content: is empty; WeChat requires it")
    if len(content) >= settings.WECHAT_CONTENT_MAX_CHARS or len(content.encode()) >= CONTENT_MAX_BYTES:
        raise WechatPermanentError(f"content: {len(content)} characters / {len(content.encode())} bytes; WeChat "
                                   f"takes fewer than {settings.WECHAT_CONTENT_MAX_CHARS} characters "
                                   "(WECHAT_CONTENT_MAX_CHARS) and 1 MB")


def _draft_article(news: News, *, content: str, thumb_media_id: str) -> dict:
    article = {"article_type": "news", "title": news.title, "content": content,
               "thumb_media_id": thumb_media_id, "need_open_comment": 0, "only_fans_can_comment": 0}
    if news.author:
        article["author"] = news.author
    if news.digest:  # empty: WeChat takes the start of the content
        article["digest"] = news.digest
    return article

