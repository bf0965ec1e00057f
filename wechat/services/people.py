"""What people do from the admin: retry a stopped article, resolve an unknown submit outcome."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext

from wechat.models import ArticleState, WechatArticle
from wechat.scheduling import schedule_wechat_draft_creation, schedule_wechat_publishing


def wechat_retry(*, news_id: int) -> str:
    """Admin "retry": resume an article that stopped. A failed one starts over with a new
    draft from the item's current content (the usual fix is an edit); uploads are reused.
    Returns the message for the person, in the active language."""
    with transaction.atomic():
        article = WechatArticle.objects.select_for_update().get(news_id=news_id)
        if article.state in (ArticleState.PUBLISHED, ArticleState.UNKNOWN, ArticleState.SUBMITTING):
            return gettext("News %(id)s: not retried, the article is in state “%(state)s”.") % {
                "id": news_id, "state": article.get_state_display()}
        if article.state == ArticleState.FAILED:
            WechatArticle.objects.filter(pk=article.pk).update(
                state=ArticleState.PENDING, generation=F("generation") + 1, draft_marker="", draft_requested_at=None,
                draft_media_id="", publish_id="", article_id="", article_url="", publish_status=None, polls=0,
                reconcile_checks=0, rate_limit_waits=0, submitted_at=None, waiting_since=None, redrafts=0)
            article.state = ArticleState.PENDING
        if article.state == ArticleState.PENDING:
            schedule_wechat_draft_creation(news_id)
            return gettext("News %(id)s: draft creation queued.") % {"id": news_id}
        WechatArticle.objects.filter(pk=article.pk).update(polls=0, rate_limit_waits=0)
        schedule_wechat_publishing(news_id, article.draft_media_id)
        return gettext("News %(id)s: publishing queued (was “%(state)s”).") % {
            "id": news_id, "state": article.get_state_display()}


def wechat_resolve_unknown(*, news_id: int, published: bool | None) -> bool:
    """A person looked at an unknown outcome: True it was published, False it was not (submit
    again), None check WeChat again (e.g. after the quota reset), waiting WECHAT_PUBLISH_MAX_WAIT
    anew. With a publish_id (WeChat accepted the submit, then took longer than that wait),
    checking again polls freepublish/get, which knows that publication for certain."""
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
                state=ArticleState.PUBLISHING if article.publish_id else ArticleState.CHECKING, reconcile_checks=0,
                polls=0, rate_limit_waits=0, waiting_since=timezone.now())
        else:
            # The person's decision: the publication WeChat accepted (if any) did not happen.
            WechatArticle.objects.filter(pk=article.pk).update(
                state=ArticleState.DRAFTED, publish_id="", rate_limit_waits=0)
        schedule_wechat_publishing(news_id, article.draft_media_id)
    return True

