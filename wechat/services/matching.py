"""`wechat:push_match`: a PUBLISHJOBFINISH for a publish_id no article has. That is the
publication of a submit whose answer was lost (timeout, dropped reply, worker killed during
the call), or one that is not ours (the console, another installation on the account).

WeChat puts the article_id of a successful publication in the push, and
freepublish/getarticle returns that article's content, which carries our hidden marker: the
marker says which article it is, and the article adopts the publish_id and its outcome.
A failure (publish_status 2-4) comes without an article_id, so nothing proves whose it was:
the articles whose submit answer was lost before it arrived go to a person, with the
failure shown, and are never submitted again automatically.

It runs as a job, not in the request: WeChat waits only 5 s for the callback's answer."""

from __future__ import annotations

import logging
from datetime import datetime

from django.utils import timezone

from jobs.monitoring.alerts import Alert, raise_alert
from wechat.client import WechatClient, WechatPermanentError
from wechat.models import ArticleState, WechatArticle
from wechat.scheduling import schedule_wechat_publishing
from wechat.services.callback import PUBLISH_STATUS, apply_publish_result, failure_message, safe_article_url
from wechat.services.records import CLOCK_SLACK, carries_marker

logger = logging.getLogger("wechat.services")

# An article whose submit may have gone through without us knowing its publish_id.
LOST_SUBMIT_STATES = [ArticleState.SUBMITTING, ArticleState.CHECKING, ArticleState.UNKNOWN]


def wechat_match_push(*, publish_id: str, status: int, article_id: str, urls: list, fail_idx: list,
                      received_at: datetime) -> str:
    known = WechatArticle.objects.filter(publish_id=publish_id).first()
    if known is not None:  # adopted since (a repeated push, or the batchget search got there first)
        apply_publish_result(publish_id, status=status, article_id=article_id, urls=urls, fail_idx=fail_idx,
                             source="the push")
        return f"publish {publish_id} is news {known.news_id}'s; nothing left to match"
    candidates = list(WechatArticle.objects.select_related("news").filter(state__in=LOST_SUBMIT_STATES,
                                                                          publish_id=""))
    if not candidates:
        logger.info("wechat match: publish %s (status %s): no article is waiting on an unanswered submit; "
                    "not ours", publish_id, status)
        return f"publish {publish_id}: not ours (no article has an unanswered submit)"
    client = WechatClient.from_settings()
    if status == 0 and not article_id:
        # Documented in the push; asked for if missing (freepublish/get knows this publish_id).
        article_id = str(client.get_publish_status(publish_id).get("article_id") or "")
    if article_id:
        return _match_by_content(client, candidates, publish_id=publish_id, status=status, article_id=article_id,
                                 urls=urls, fail_idx=fail_idx)
    return _failure_without_article(candidates, publish_id=publish_id, status=status, fail_idx=fail_idx,
                                    received_at=received_at)


def _match_by_content(client, candidates, *, publish_id, status, article_id, urls, fail_idx) -> str:
    try:
        items = client.get_article(article_id)
    except WechatPermanentError as exc:
        if exc.errcode != 53600:  # 53600: WeChat does not know the article_id (deleted, or not a success)
            raise
        items = []
    article = next((a for a in candidates if carries_marker(items, a)), None)
    if article is None:
        logger.info("wechat match: publish %s (article %s) carries none of our markers; not ours", publish_id,
                    article_id)
        return f"publish {publish_id}: article {article_id} is not one of ours"
    url = safe_article_url((urls or [""])[0] or str((items[0] if items else {}).get("url") or ""),
                           source="freepublish/getarticle")
    changes = {"publish_id": publish_id, "article_id": article_id, "publish_status": status}
    if status == 0:
        changes.update(state=ArticleState.PUBLISHED, article_url=url[:1024], published_at=timezone.now(),
                       last_error="")
    else:
        changes.update(state=ArticleState.FAILED, last_error=failure_message(publish_id, status, fail_idx))
    adopted = WechatArticle.objects.filter(pk=article.pk, state__in=LOST_SUBMIT_STATES, publish_id="").update(
        **changes)
    if not adopted:
        return f"publish {publish_id}: news {article.news_id} was settled meanwhile"
    logger.warning("wechat match: news %s: the submit whose answer was lost is publish %s (found by its marker "
                   "in article %s): %s", article.news_id, publish_id, article_id, changes["state"])
    # Wake its publishing job, which finds nothing left to do (or, dead already, a new one that says so).
    schedule_wechat_publishing(article.news_id, article.draft_media_id)
    return f"publish {publish_id} is news {article.news_id}'s (marker found): {changes['state']}"


def _failure_without_article(candidates, *, publish_id, status, fail_idx, received_at) -> str:
    """No article_id, no content: which lost submit failed cannot be proven. Each article whose
    submit was sent before the push arrived goes to a person, showing the failure."""
    reported = failure_message(publish_id, status, fail_idx)
    suspects = [a for a in candidates if a.submitted_at and a.submitted_at - CLOCK_SLACK <= received_at]
    if not suspects:
        return f"publish {publish_id}: no unanswered submit was sent before it; not ours"
    which = "probably this article's (the only one with an unanswered submit)" if len(suspects) == 1 else (
        f"one of {len(suspects)} articles with an unanswered submit")
    for article in suspects:
        message = (f"WeChat reported {reported} for a submit whose answer we never got: {which}. WeChat does not "
                   "say which article failed, so nothing is submitted again automatically. Check the account's "
                   "publish records; then in the admin use 'it was NOT published, submit again' (after fixing "
                   "what WeChat refused) or 'it WAS published'")
        moved = WechatArticle.objects.filter(pk=article.pk, state__in=LOST_SUBMIT_STATES, publish_id="").update(
            state=ArticleState.UNKNOWN, publish_status=status, last_error=message[:2000])
        if moved:
            alert_person(article, message)
            schedule_wechat_publishing(article.news_id, article.draft_media_id)  # goes dead: the alert holds
    return f"publish {publish_id} ({PUBLISH_STATUS.get(status, status)}): {len(suspects)} article(s) left to a person"


def alert_person(article: WechatArticle, message: str) -> None:
    """An ALERT line now (and the webhook, if set); the article's dead publishing job keeps the
    dead-jobs alert of the health check up until a person resolves it."""
    raise_alert(Alert(key=f"wechat_unknown:news:{article.news_id}", kind="wechat_unknown", queue="wechat",
                      summary=f"WeChat article of news {article.news_id} needs a person: {message[:300]}",
                      value=1, threshold=0))
