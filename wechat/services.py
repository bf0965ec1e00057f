"""Pushing a published news item to the WeChat Official Account: draft, submit, follow.

Two jobs carry an item (jobs run at least once, so both are written to run again safely):
- `wechat:draft_creation` puts the cover and content images on WeChat (each image once, by
  its sha256), creates the draft once (a hidden marker lets a re-run find a draft whose
  draft/add answer was lost) and, in the transaction that records it, enqueues
- `wechat:publishing`, which submits the draft at most once and then follows it: the
  PUBLISHJOBFINISH push (wechat/views.py) settles it at once; polling freepublish/get,
  sparingly, is the fallback. A submit that got no answer is looked for in the publish
  records (freepublish/batchget) and submitted again only when it is certainly not there.

WeChat errors reach here as the client's types and leave as the engine's: transient ones are
re-raised (retried with backoff), rate limits and quotas wait (Snooze), refusals are
PermanentError with the article marked failed.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, time as dtime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from jobs import scheduler
from jobs.errors import PermanentError, Snooze
from news.models import News
from nextevent.redis import get_redis
from wechat.client import (
    PAGE_SIZE,
    Upload,
    WechatClient,
    WechatError,
    WechatOutcomeUnknown,
    WechatPermanentError,
    WechatQuotaExhausted,
    WechatRateLimited,
    WechatTransientError,
)
from wechat.images import content_image_sources, fetch_image, rewrite_content_images
from wechat.models import ArticleState, ImageKind, WechatArticle, WechatImage

logger = logging.getLogger(__name__)

DEFAULT_THUMB_PATH = Path(__file__).resolve().parent / "assets" / "default-thumb.jpg"
THUMB_MAX_BYTES = 64 * 1024  # material/add_material?type=thumb: JPG, at most 64 KB
CONTENT_MAX_BYTES = 1_000_000
UPLOAD_LOCK_SECONDS = 60
QUOTA_TIME_ZONE = ZoneInfo("Asia/Shanghai")  # daily quotas reset at midnight Beijing time
# WeChat's clock and ours disagree a little: a draft or publication this much older than our
# request can still be the one it made.
CLOCK_SLACK = timedelta(seconds=120)
PUBLISH_STATUS = {0: "published", 1: "publishing", 2: "original-content check failed", 3: "publishing failed",
                  4: "platform audit failed", 5: "deleted after publishing", 6: "banned after publishing"}


# ---------------------------------------------------------------- starting


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
            scheduler.schedule_wechat_draft_creation(news_id)
    return created


def _article_for_draft(news_id: int) -> WechatArticle | None:
    article = WechatArticle.objects.select_related("news").filter(news_id=news_id).first()
    if article is None and News.objects.filter(pk=news_id, push_to_wechat=True).exists():
        # A draft job enqueued directly (scheduler.schedule_wechat_draft_creation, the demo
        # command) rather than through the publish hook: the item still wants WeChat.
        WechatArticle.objects.get_or_create(news_id=news_id)
        article = WechatArticle.objects.select_related("news").get(news_id=news_id)
    return article


# ---------------------------------------------------------------- the draft


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
    with _as_job_errors(article):
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
            scheduler.schedule_wechat_publishing(news_id, media_id)
    if not won:
        return _lost_the_draft_race(client, article, media_id)
    how = "found in the draft box after a lost answer" if adopted else "created"
    logger.info("wechat draft: news %s -> draft %s (%s)", news_id, media_id, how)
    return f"draft {media_id}" + (" (found in the draft box: draft/add had been accepted)" if adopted else "") + (
        "" if settings.WECHAT_AUTO_PUBLISH else " (WECHAT_AUTO_PUBLISH is off)")


def _add_draft(client: WechatClient, article: WechatArticle, news: News, marker: str) -> str:
    thumb = _cover_media_id(client, article, news)
    content = _rewrite_content_images(client, article, news.content)
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
        if exc.errcode == 40007:
            _forget_thumb(article, thumb)
        raise


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
    for item in _pages(client.list_drafts):
        if _is_ours(item, article, since=since):
            logger.warning("wechat draft: news %s: draft/add had been accepted; adopting draft %s",
                           article.news_id, item.get("media_id"))
            return str(item["media_id"])
    return None


def _pages(list_page):
    """Items of a newest-first listing (draft/batchget, freepublish/batchget), at most
    WECHAT_SEARCH_PAGES pages: each page is a call against a daily quota."""
    for page in range(settings.WECHAT_SEARCH_PAGES):
        data = list_page(offset=page * PAGE_SIZE, count=PAGE_SIZE)
        items = data.get("item") or []
        yield from items
        if len(items) < PAGE_SIZE or (page + 1) * PAGE_SIZE >= int(data.get("total_count") or 0):
            return


def _is_ours(item: dict, article: WechatArticle, *, since: datetime) -> bool:
    """A draft box or publish record item is this article's if its content carries the
    marker; or, should WeChat have dropped the comment, if it has the same title and cover
    and appeared after we sent it."""
    news_items = (item.get("content") or {}).get("news_item") or []
    if any(article.draft_marker and article.draft_marker in (n.get("content") or "") for n in news_items):
        return True
    updated = int(item.get("update_time") or 0)
    return bool(article.thumb_media_id) and updated >= since.timestamp() and any(
        n.get("title") == article.news.title and n.get("thumb_media_id") == article.thumb_media_id
        for n in news_items)


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


# ---------------------------------------------------------------- images


def _cover_media_id(client: WechatClient, article: WechatArticle, news: News) -> str:
    if article.thumb_media_id:
        return article.thumb_media_id
    if news.cover_image:
        name, data = _read_cover(news)
    elif settings.WECHAT_DEFAULT_THUMB_MEDIA_ID:
        return settings.WECHAT_DEFAULT_THUMB_MEDIA_ID
    else:
        name, data = DEFAULT_THUMB_PATH.name, DEFAULT_THUMB_PATH.read_bytes()
    media_id = _uploaded_once(ImageKind.THUMB, data, name,
                              lambda: client.add_thumb_material(Upload(name, data, "image/jpeg")))
    # Recorded at once: a retry must not even look the image up again.
    WechatArticle.objects.filter(pk=article.pk).update(thumb_media_id=media_id)
    article.thumb_media_id = media_id
    return media_id


def _read_cover(news: News) -> tuple[str, bytes]:
    name = posixpath.basename(news.cover_image.name)
    try:
        with news.cover_image.open("rb") as f:
            data = f.read(THUMB_MAX_BYTES + 1)
    except OSError as exc:
        raise WechatPermanentError(f"cover_image: cannot read {news.cover_image.name!r}: {exc}") from None
    if not data.startswith(b"\xff\xd8\xff"):
        raise WechatPermanentError(f"cover_image: {name!r} is not a JPEG; WeChat's cover (thumb material) must be "
                                   "a JPG of at most 64 KB")
    if len(data) > THUMB_MAX_BYTES:
        raise WechatPermanentError(f"cover_image: {name!r} is larger than 64 KB, the most WeChat takes for a "
                                   "cover (thumb material)")
    if not name.lower().endswith((".jpg", ".jpeg")):
        name = f"{name.rsplit('.', 1)[0] or 'cover'}.jpg"  # WeChat goes by the extension (else 40113)
    return name, data


def _uploaded_once(kind: str, data: bytes, filename: str, upload) -> str:
    """The media_id (thumb) or URL (content) of these bytes on WeChat, uploading them only if
    no article did before. A Redis lock keeps two workers from uploading the same image."""
    sha = hashlib.sha256(data).hexdigest()

    def known():
        row = WechatImage.objects.filter(kind=kind, sha256=sha).first()
        return row and (row.media_id or row.url)

    if found := known():
        return found
    with _upload_lock(f"wechat:upload:{kind}:{sha}"):
        if found := known():
            return found
        result = upload()
        field = "media_id" if kind == ImageKind.THUMB else "url"
        try:
            WechatImage.objects.create(kind=kind, sha256=sha, size=len(data), filename=filename[:128],
                                       **{field: result})
        except IntegrityError:  # the lock expired under a very slow upload: both are valid
            pass
    return result


@contextmanager
def _upload_lock(key: str):
    redis, owner = get_redis(), secrets.token_hex(8)
    deadline = time.monotonic() + UPLOAD_LOCK_SECONDS
    while not redis.set(key, owner, nx=True, ex=UPLOAD_LOCK_SECONDS):
        if time.monotonic() > deadline:
            break  # the holder died holding it: uploading twice beats waiting on
        time.sleep(0.1)
    try:
        yield
    finally:
        redis.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                   1, key, owner)


def _forget_thumb(article: WechatArticle, media_id: str) -> None:
    # draft/add said the cover's media_id is invalid (deleted from the account's material):
    # forget it so that a retry uploads the image again.
    WechatArticle.objects.filter(pk=article.pk, thumb_media_id=media_id).update(thumb_media_id="")
    WechatImage.objects.filter(kind=ImageKind.THUMB, media_id=media_id).delete()


def _rewrite_content_images(client: WechatClient, article: WechatArticle, content: str) -> str:
    """WeChat strips images from other hosts: upload each and point the content at WeChat's copy."""
    uploaded = dict(article.content_images or {})
    for src, url in content_image_sources(content):
        if src in uploaded:
            continue
        image = fetch_image(url)
        uploaded[src] = _uploaded_once(ImageKind.CONTENT, image.data, image.filename,
                                       lambda: client.upload_article_image(image))
        WechatArticle.objects.filter(pk=article.pk).update(content_images=uploaded)
    article.content_images = uploaded
    return rewrite_content_images(content, uploaded)


# ---------------------------------------------------------------- submitting and following


def wechat_publish(*, news_id: int, draft_id: str) -> str:
    article = WechatArticle.objects.select_related("news").filter(news_id=news_id).first()
    if article is None:
        logger.info("wechat publish: news %s has no WeChat article (deleted?); nothing to do", news_id)
        return "no WeChat article for this news item"
    if article.draft_media_id != draft_id:
        logger.info("wechat publish: news %s job for draft %s is stale (article has %r)", news_id, draft_id,
                    article.draft_media_id)
        return "stale: the article has another draft"
    if article.state == ArticleState.DRAFTED:
        return _submit(article, claim_from=ArticleState.DRAFTED)
    if article.state == ArticleState.SUBMITTING:
        # We hold this job, so the attempt that set SUBMITTING is gone (crashed, or its lease
        # was taken over) and nobody knows whether WeChat accepted its submit.
        _begin_check(article, "an earlier attempt stopped during freepublish/submit")
        article.refresh_from_db()
    if article.state == ArticleState.CHECKING:
        return _reconcile(article)
    if article.state == ArticleState.PUBLISHING:
        return _poll(article)
    return f"article is {article.state}; nothing to do"


def _submit(article: WechatArticle, *, claim_from: str) -> str:
    # Never a draft that has a publish_id: that submit was accepted.
    claimed = WechatArticle.objects.filter(pk=article.pk, state=claim_from, publish_id="").update(
        state=ArticleState.SUBMITTING, submitted_at=timezone.now())
    if not claimed:
        return "another attempt is submitting this draft"
    with _as_job_errors(article):
        client = WechatClient.from_settings()
        try:
            publish_id = client.submit_publish(article.draft_media_id)
        except WechatOutcomeUnknown as exc:
            _begin_check(article, str(exc))
            raise Snooze(_first_check_at(article), f"freepublish/submit got no answer ({exc}); looking for the "
                                              "publication in freepublish/batchget before submitting again"
                         ) from None
        except WechatError:
            # WeChat answered with an error: the draft was not accepted; back to submittable.
            WechatArticle.objects.filter(pk=article.pk, state=ArticleState.SUBMITTING).update(state=claim_from)
            raise
    # CHECKING and UNKNOWN too: this worker was thought dead but its call did go through.
    WechatArticle.objects.filter(
        pk=article.pk, state__in=[ArticleState.SUBMITTING, ArticleState.CHECKING, ArticleState.UNKNOWN]).update(
        state=ArticleState.PUBLISHING, publish_id=publish_id, last_error="")
    logger.info("wechat publish: news %s draft %s submitted as publish %s", article.news_id,
                article.draft_media_id, publish_id)
    raise Snooze(timezone.now() + timedelta(seconds=settings.WECHAT_POLL_FIRST),
                 f"submitted as publish {publish_id}; waiting for WeChat to publish")


def _begin_check(article: WechatArticle, why: str) -> None:
    message = f"freepublish/submit outcome unknown ({why}); checking freepublish/batchget before submitting again"
    WechatArticle.objects.filter(pk=article.pk, state=ArticleState.SUBMITTING).update(
        state=ArticleState.CHECKING, last_error=message[:2000])
    article.refresh_from_db(fields=["state", "submitted_at", "last_error"])
    logger.warning("wechat publish: news %s: %s", article.news_id, message)


def _first_check_at(article: WechatArticle) -> datetime:
    """A submit still in flight (its worker thought dead, its answer late) is over by
    WECHAT_RECONCILE_DELAY after it was sent: only then is its absence from the records news."""
    return (article.submitted_at or timezone.now()) + timedelta(seconds=settings.WECHAT_RECONCILE_DELAY)


def _next_check_at(article: WechatArticle) -> datetime:
    wait = settings.WECHAT_RECONCILE_DELAY * 2 ** min(article.reconcile_checks, 10)
    return timezone.now() + timedelta(seconds=min(wait, max(settings.WECHAT_POLL_MAX_INTERVAL,
                                                            settings.WECHAT_RECONCILE_DELAY)))


def _reconcile(article: WechatArticle) -> str:
    """After a submit with no answer: adopt the publication if WeChat made it; submit again
    only if it certainly did not (not in the records, and the draft still in the draft box)."""
    due = _first_check_at(article)
    if timezone.now() < due:
        raise Snooze(due, "waiting before looking for the unanswered submit in freepublish/batchget")
    if article.reconcile_checks >= settings.WECHAT_RECONCILE_MAX_CHECKS:
        _needs_person(article, f"not found in freepublish/batchget after {article.reconcile_checks} checks while "
                               "WeChat no longer holds the draft (WECHAT_RECONCILE_MAX_CHECKS)")
    WechatArticle.objects.filter(pk=article.pk).update(reconcile_checks=F("reconcile_checks") + 1)
    article.reconcile_checks += 1
    client = WechatClient.from_settings()
    try:
        with _as_job_errors(article, permanent=False):
            found = _find_publication(client, article)
            if found is None:
                draft_there = _draft_exists(client, article.draft_media_id)
    except (WechatQuotaExhausted, WechatPermanentError) as exc:
        _needs_person(article, f"the publish records could not be searched: {exc}")
    if found is not None:
        article_id, url = found
        WechatArticle.objects.filter(pk=article.pk, state=ArticleState.CHECKING).update(
            state=ArticleState.PUBLISHED, article_id=article_id, article_url=url[:1024], publish_status=0,
            published_at=timezone.now(), last_error="")
        logger.info("wechat publish: news %s: the unanswered submit was accepted; published as %s", article.news_id,
                    article_id)
        return f"published: found in freepublish/batchget as article {article_id}"
    if draft_there:
        logger.warning("wechat publish: news %s: the unanswered submit did not publish; submitting draft %s again",
                       article.news_id, article.draft_media_id)
        return _submit(article, claim_from=ArticleState.CHECKING)
    # WeChat took the draft out of the box: the submit was accepted and is still publishing
    # (or failed, or a person removed the draft). Look again later.
    raise Snooze(_next_check_at(article), f"draft {article.draft_media_id} left the draft box but is not in "
                                      f"freepublish/batchget yet (check {article.reconcile_checks})")


def _find_publication(client: WechatClient, article: WechatArticle) -> tuple[str, str] | None:
    since = (article.submitted_at or article.drafted_at or article.created_at) - CLOCK_SLACK
    for item in _pages(client.list_published):
        if _is_ours(item, article, since=since):
            news_items = (item.get("content") or {}).get("news_item") or [{}]
            return str(item.get("article_id") or ""), str(news_items[0].get("url") or "")
    return None


def _draft_exists(client: WechatClient, media_id: str) -> bool:
    try:
        client.get_draft(media_id)
    except WechatPermanentError as exc:
        if exc.errcode == 40007:  # invalid media_id: no such draft in the box
            return False
        raise
    return True


def _needs_person(article: WechatArticle, why: str):
    message = (f"freepublish/submit outcome unknown: {why}. Submitting again could publish twice: check the "
               "account's publish records, then in the admin use 'it was published', 'it was not published' "
               "or 'check WeChat again'")
    WechatArticle.objects.filter(pk=article.pk, state__in=[ArticleState.CHECKING, ArticleState.SUBMITTING]).update(
        state=ArticleState.UNKNOWN, last_error=message[:2000])
    logger.error("wechat publish: news %s: %s", article.news_id, message)
    raise PermanentError(message)


def _poll(article: WechatArticle) -> str:
    if article.polls >= settings.WECHAT_MAX_POLLS:
        # Left in PUBLISHING: a late PUBLISHJOBFINISH push can still settle it.
        raise PermanentError(f"publish {article.publish_id} still not settled after {article.polls} polls "
                             "(WECHAT_MAX_POLLS)")
    if not _spend_daily_budget("freepublish/get", settings.WECHAT_POLLS_PER_DAY):
        message = (f"publish {article.publish_id}: today's WECHAT_POLLS_PER_DAY ({settings.WECHAT_POLLS_PER_DAY}) "
                   "freepublish/get calls are spent; polling again tomorrow (the push can settle it before)")
        _note(article, message)
        raise Snooze(next_quota_reset(), message)
    WechatArticle.objects.filter(pk=article.pk).update(polls=F("polls") + 1)
    with _as_job_errors(article):
        data = WechatClient.from_settings().get_publish_status(article.publish_id)
    detail = data.get("article_detail") or {}
    _apply_publish_result(
        article.publish_id, status=int(data.get("publish_status", -1)), article_id=str(data.get("article_id") or ""),
        urls=[item.get("article_url", "") for item in detail.get("item") or []], fail_idx=data.get("fail_idx") or [])
    article.refresh_from_db(fields=["state", "last_error"])
    if article.state == ArticleState.PUBLISHING:  # still publishing
        wait = min(settings.WECHAT_POLL_FIRST * 2 ** (article.polls + 1), settings.WECHAT_POLL_MAX_INTERVAL)
        raise Snooze(timezone.now() + timedelta(seconds=wait), f"publish {article.publish_id} still in progress")
    if article.state == ArticleState.FAILED:
        raise PermanentError(article.last_error)
    return f"published: {article.publish_id}"


def _apply_publish_result(publish_id: str, *, status: int, article_id: str, urls: list[str],
                          fail_idx: list) -> bool:
    """Record a settled publish (from polling or the push). True if this changed the article;
    a second report of the same outcome, or one while still publishing, changes nothing."""
    if status == 1:
        return False
    meaning = PUBLISH_STATUS.get(status, f"unknown publish_status {status}")
    if status == 0:
        return bool(WechatArticle.objects.filter(publish_id=publish_id, state=ArticleState.PUBLISHING).update(
            state=ArticleState.PUBLISHED, article_id=article_id, article_url=(urls or [""])[0][:1024],
            publish_status=0, published_at=timezone.now(), last_error=""))
    failed = f"; failed articles (idx from 1): {fail_idx}" if fail_idx else ""
    message = f"publish {publish_id}: {meaning} (publish_status {status}){failed}"
    # 5 and 6 arrive after success: the article was there and is no more.
    return bool(WechatArticle.objects.filter(
        publish_id=publish_id, state__in=[ArticleState.PUBLISHING, ArticleState.PUBLISHED]
    ).exclude(publish_status=status).update(state=ArticleState.FAILED, publish_status=status, last_error=message))


def wechat_publish_event(*, publish_id: str, status: int, article_id: str = "", urls: list[str] = (),
                         fail_idx: list = ()) -> str | None:
    """A PUBLISHJOBFINISH push. Settles the article and wakes its waiting job, which then
    finds nothing left to do, so the ledger shows the outcome now rather than at the next poll.
    Returns the article's state, None if the publish is not one we know."""
    article = WechatArticle.objects.filter(publish_id=publish_id).first()
    if article is None:
        # Perhaps the publication of a submit whose answer was lost: let those articles'
        # jobs search the publish records now rather than at their next check.
        checking = list(WechatArticle.objects.filter(state=ArticleState.CHECKING)
                        .values_list("news_id", "draft_media_id")[:20])
        for news_id, draft_id in checking:
            scheduler.schedule_wechat_publishing(news_id, draft_id)
        logger.info("wechat event: publish %s is not one we know; woke %s article(s) checking an unanswered submit",
                    publish_id, len(checking))
        return None
    changed = _apply_publish_result(publish_id, status=status, article_id=article_id, urls=list(urls),
                                    fail_idx=list(fail_idx))
    if changed:
        # Moves the live job (waiting for its next poll) to now; there is no live job only
        # if polling gave up, and then the new one just records that all is done.
        scheduler.schedule_wechat_publishing(article.news_id, article.draft_media_id)
    article.refresh_from_db(fields=["state"])
    logger.info("wechat event: publish %s of news %s -> %s", publish_id, article.news_id, article.state)
    return article.state


# ---------------------------------------------------------------- errors


@contextmanager
def _as_job_errors(article: WechatArticle, *, permanent: bool = True):
    """WeChat's error types as the engine's outcomes. permanent=False leaves refusals and
    exhausted quotas to the caller (reconciliation decides what they mean)."""
    try:
        yield
    except WechatQuotaExhausted as exc:
        if not permanent:
            raise
        _note(article, str(exc))
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
        _note(article, str(exc))
        raise


def _note(article: WechatArticle, message: str) -> None:
    WechatArticle.objects.filter(pk=article.pk).update(last_error=message[:2000])


def _spend_daily_budget(api: str, budget: int) -> bool:
    """Count one call of `api` against our own daily budget, shared by every worker through
    Redis and reset with WeChat's quotas (midnight in Beijing). False: the budget is spent."""
    day = timezone.localtime(timezone.now(), QUOTA_TIME_ZONE).date().isoformat()
    key = f"wechat:spent:{settings.WECHAT_APP_ID}:{api}:{day}"
    redis = get_redis()
    spent = redis.incr(key)
    if spent == 1:
        redis.expire(key, 2 * 24 * 3600)
    return spent <= budget


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
                state=ArticleState.PENDING, generation=F("generation") + 1, draft_marker="", draft_requested_at=None,
                draft_media_id="", publish_id="", article_id="", article_url="", publish_status=None, polls=0,
                reconcile_checks=0, rate_limit_waits=0, submitted_at=None)
            article.state = ArticleState.PENDING
        if article.state == ArticleState.PENDING:
            scheduler.schedule_wechat_draft_creation(news_id)
            return f"news {news_id}: draft creation queued"
        WechatArticle.objects.filter(pk=article.pk).update(polls=0, rate_limit_waits=0)
        scheduler.schedule_wechat_publishing(news_id, article.draft_media_id)
        return f"news {news_id}: publishing queued ({article.state})"


def wechat_resolve_unknown(*, news_id: int, published: bool | None) -> bool:
    """A person looked at an unknown submit outcome: True it was published, False it was not
    (submit again), None check WeChat's publish records again (e.g. after the quota reset)."""
    with transaction.atomic():
        article = WechatArticle.objects.select_for_update().filter(news_id=news_id, state=ArticleState.UNKNOWN).first()
        if article is None:
            return False
        if published:
            WechatArticle.objects.filter(pk=article.pk).update(
                state=ArticleState.PUBLISHED, published_at=timezone.now(),
                last_error="marked published by a person after an unknown submit outcome")
            return True
        if published is None:
            WechatArticle.objects.filter(pk=article.pk).update(
                state=ArticleState.CHECKING, reconcile_checks=0, rate_limit_waits=0)
        else:
            WechatArticle.objects.filter(pk=article.pk).update(state=ArticleState.DRAFTED, rate_limit_waits=0)
        scheduler.schedule_wechat_publishing(news_id, article.draft_media_id)
    return True
