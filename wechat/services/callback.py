"""Settling a publication: from the PUBLISHJOBFINISH push (wechat/views.py) or from polling.
A repeated report of the same outcome changes nothing."""

from __future__ import annotations

import logging

from django.utils import timezone

from wechat.models import ArticleState, WechatArticle
from wechat.scheduling import schedule_wechat_publishing

logger = logging.getLogger("wechat.services")

PUBLISH_STATUS = {0: "published", 1: "publishing", 2: "original-content check failed", 3: "publishing failed",
                  4: "platform audit failed", 5: "deleted after publishing", 6: "banned after publishing"}


def apply_publish_result(publish_id: str, *, status: int, article_id: str, urls: list[str],
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
            schedule_wechat_publishing(news_id, draft_id)
        logger.info("wechat event: publish %s is not one we know; woke %s article(s) checking an unanswered submit",
                    publish_id, len(checking))
        return None
    changed = apply_publish_result(publish_id, status=status, article_id=article_id, urls=list(urls),
                                    fail_idx=list(fail_idx))
    if changed:
        # Moves the live job (waiting for its next poll) to now; there is no live job only
        # if polling gave up, and then the new one just records that all is done.
        schedule_wechat_publishing(article.news_id, article.draft_media_id)
    article.refresh_from_db(fields=["state"])
    logger.info("wechat event: publish %s of news %s -> %s", publish_id, article.news_id, article.state)
    return article.state

