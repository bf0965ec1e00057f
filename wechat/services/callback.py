"""Settling a publication: from the PUBLISHJOBFINISH push (wechat/views.py) or from polling.
A repeated report of the same outcome changes nothing. Nothing here calls WeChat: the view
runs it inside the request (WeChat waits 5 s for the answer)."""

from __future__ import annotations

import logging

from django.utils import timezone

from wechat.callback_security import CallbackRefused, check_article_url
from wechat.models import ArticleState, WechatArticle
from wechat.scheduling import schedule_wechat_publishing, schedule_wechat_push_match

logger = logging.getLogger("wechat.services")

PUBLISH_STATUS = {0: "published", 1: "publishing", 2: "original-content check failed", 3: "publishing failed",
                  4: "platform audit failed", 5: "deleted after publishing", 6: "banned after publishing"}


def safe_article_url(url: str, *, source: str) -> str:
    """The article URL if it is https on one of WeChat's article hosts (WECHAT_ARTICLE_HOSTS),
    else "" with a warning: it is shown to editors and readers, whoever sent it."""
    if not url:
        return ""
    try:
        return check_article_url(url)
    except CallbackRefused as refused:
        logger.warning("wechat: article_url from %s not stored: %s", source, refused.message)
        return ""


def failure_message(publish_id: str, status: int, fail_idx) -> str:
    meaning = PUBLISH_STATUS.get(status, f"unknown publish_status {status}")
    failed = f"; failed articles (idx from 1): {list(fail_idx)}" if fail_idx else ""
    return f"publish {publish_id}: {meaning} (publish_status {status}){failed}"


def apply_publish_result(publish_id: str, *, status: int, article_id: str, urls: list[str],
                          fail_idx: list, source: str = "freepublish/get") -> bool:
    """Record a settled publish (from polling or the push). True if this changed the article;
    a second report of the same outcome, or one while still publishing, changes nothing."""
    if status == 1:
        return False
    # UNKNOWN with a publish_id: WeChat took longer than WECHAT_PUBLISH_MAX_WAIT and the article
    # went to a person; what WeChat says later still settles it.
    waiting = [ArticleState.PUBLISHING, ArticleState.UNKNOWN]
    if status == 0:
        url = safe_article_url((urls or [""])[0], source=source)
        return bool(WechatArticle.objects.filter(publish_id=publish_id, state__in=waiting).update(
            state=ArticleState.PUBLISHED, article_id=article_id, article_url=url[:1024],
            publish_status=0, published_at=timezone.now(), last_error=""))
    # 5 and 6 arrive after success: the article was there and is no more.
    return bool(WechatArticle.objects.filter(
        publish_id=publish_id, state__in=[*waiting, ArticleState.PUBLISHED]
    ).exclude(publish_status=status).update(state=ArticleState.FAILED, publish_status=status,
                                            last_error=failure_message(publish_id, status, fail_idx)))


def wechat_publish_event(*, publish_id: str, status: int, article_id: str = "", urls: list[str] = (),
                         fail_idx: list = ()) -> str | None:
    """A PUBLISHJOBFINISH push. Settles the article and wakes its waiting job, which then
    finds nothing left to do, so the ledger shows the outcome now rather than at the next poll.
    A publish_id no article has is the publication of a submit whose answer was lost (or not
    ours at all): a wechat:push_match job identifies it by its content, outside the request.
    Returns the article's state, None if the publish is not one we know."""
    article = WechatArticle.objects.filter(publish_id=publish_id).first()
    if article is None:
        schedule_wechat_push_match(publish_id=publish_id, status=status, received_at=timezone.now(),
                                   article_id=article_id, urls=list(urls), fail_idx=list(fail_idx))
        logger.info("wechat event: publish %s is not one we know; matching it to an article in a job", publish_id)
        return None
    changed = apply_publish_result(publish_id, status=status, article_id=article_id, urls=list(urls),
                                    fail_idx=list(fail_idx), source="the push")
    if changed:
        # Moves the live job (waiting for its next poll) to now; there is no live job only
        # if polling gave up, and then the new one just records that all is done.
        schedule_wechat_publishing(article.news_id, article.draft_media_id)
    article.refresh_from_db(fields=["state"])
    logger.info("wechat event: publish %s of news %s -> %s", publish_id, article.news_id, article.state)
    return article.state
