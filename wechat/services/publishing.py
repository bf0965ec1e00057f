"""`wechat:publishing`: submit the draft at most once, then follow it. The push settles it
at once (wechat/services/callback.py); polling freepublish/get, sparingly, is the fallback.

The exactly-once rule: a submit whose outcome is unknown (no answer, or its worker died
during the call) is never followed by another submit of the article by the program. WeChat
cannot prove that such a submit did nothing: publishing stays at publish_status 1 for
seconds to hours, the draft stays in the draft box meanwhile, and freepublish/batchget lists
only successes. So the article waits (CHECKING, the job snoozed with its reason shown) for
what does prove something: its publication in freepublish/batchget (found by our marker), or
the PUBLISHJOBFINISH push, matched to it by its content (wechat/services/matching.py). After
WECHAT_RECONCILE_MAX_CHECKS searches it goes to a person (UNKNOWN, dead job, alert), who
looks at the account and decides in the admin.

How long WeChat is waited for is a duration, WECHAT_PUBLISH_MAX_WAIT from the submit, not a
count of polls: however short an operator makes the intervals, a publication that takes WeChat
hours is still followed, and no wait is scheduled past the deadline. When it runs out the
article goes to a person as above; it never stays `publishing` behind a dead job.

A submit refused with 40007 (the draft was deleted from the draft box) was answered, so
nothing was published: the article gets a new draft, once (wechat/services/drafts.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from jobs.errors import PermanentError, Snooze
from wechat.client import (
    WechatClient,
    WechatError,
    WechatOutcomeUnknown,
    WechatPermanentError,
    WechatQuotaExhausted,
    WechatRateLimited,
    WechatTransientError,
)
from wechat.models import ArticleState, WechatArticle
from wechat.services.callback import apply_publish_result, safe_article_url
from wechat.services.drafts import draft_again
from wechat.services.errors import as_job_errors, note
from wechat.services.matching import alert_person
from wechat.services.quota import next_quota_reset, spend_daily_budget
from wechat.services.records import CLOCK_SLACK, is_ours, pages

logger = logging.getLogger("wechat.services")


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
    if article.state == ArticleState.UNKNOWN:
        # Dead, so that the dead-jobs alert stays up until a person resolves the article.
        raise PermanentError(article.last_error or "submit outcome unknown: a person must check WeChat")
    return f"article is {article.state}; nothing to do"


def _submit(article: WechatArticle, *, claim_from: str) -> str:
    # Never a draft that has a publish_id: that submit was accepted.
    now = timezone.now()
    claimed = WechatArticle.objects.filter(pk=article.pk, state=claim_from, publish_id="").update(
        state=ArticleState.SUBMITTING, submitted_at=now, waiting_since=now)
    if not claimed:
        return "another attempt is submitting this draft"
    article.submitted_at = article.waiting_since = now
    with as_job_errors(article):
        client = WechatClient.from_settings()
        try:
            publish_id = client.submit_publish(article.draft_media_id)
        except WechatOutcomeUnknown as exc:
            _begin_check(article, str(exc))
            raise Snooze(_first_check_at(article), f"freepublish/submit got no answer ({exc}); looking for the "
                                              "publication in freepublish/batchget and waiting for WeChat's push; "
                                              "never submitted again while it may be publishing") from None
        except WechatError as exc:
            # WeChat answered with an error: the draft was not accepted; back to submittable.
            WechatArticle.objects.filter(pk=article.pk, state=ArticleState.SUBMITTING).update(state=claim_from)
            if exc.errcode == 40007:
                # The draft is gone from the draft box (deleted in the console). An answered
                # refusal publishes nothing, so a new draft of the same item is safe; once.
                if draft_again(article=article, why=str(exc)):
                    return (f"draft {article.draft_media_id} is no longer at WeChat ({exc}); a new draft is "
                            "being created and will be submitted")
                raise WechatPermanentError(f"{exc} (the new draft made after the first 40007 was refused too)",
                                           errcode=exc.errcode, api=exc.api) from None
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
    message = (f"freepublish/submit outcome unknown ({why}); looking for it in freepublish/batchget and waiting "
               "for WeChat's push; never submitted again while it may be publishing")
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
    return min(timezone.now() + timedelta(seconds=min(wait, max(settings.WECHAT_POLL_MAX_INTERVAL,
                                                                settings.WECHAT_RECONCILE_DELAY))),
               _deadline(article))


def _deadline(article: WechatArticle) -> datetime:
    """Until when WeChat is waited for: WECHAT_PUBLISH_MAX_WAIT after the submit (or after a
    person's "check WeChat again"). Read at each run, so a changed setting applies to all."""
    since = article.waiting_since or article.submitted_at or timezone.now()
    return since + timedelta(seconds=settings.WECHAT_PUBLISH_MAX_WAIT)


def _waited(article: WechatArticle) -> str:
    since = article.waiting_since or article.submitted_at
    when = f" since {timezone.localtime(since):%Y-%m-%d %H:%M %Z}" if since else ""
    return f"WeChat has not settled it within WECHAT_PUBLISH_MAX_WAIT ({settings.WECHAT_PUBLISH_MAX_WAIT} s){when}"


def _reconcile(article: WechatArticle) -> str:
    """After a submit with no answer: adopt the publication once WeChat shows it; never submit
    again. Bounded: WECHAT_RECONCILE_MAX_CHECKS searches, then a person decides."""
    due = _first_check_at(article)
    if timezone.now() < due:
        raise Snooze(due, "freepublish/submit outcome unknown: waiting before looking in freepublish/batchget "
                          "(never submitted again while an earlier submit may still be publishing)")
    if article.reconcile_checks >= settings.WECHAT_RECONCILE_MAX_CHECKS:
        _needs_person(article, f"not found in freepublish/batchget after {article.reconcile_checks} searches "
                               "(WECHAT_RECONCILE_MAX_CHECKS), and no PUBLISHJOBFINISH push matched it; WeChat "
                               "may still be publishing it, or the submit may never have reached WeChat")
    WechatArticle.objects.filter(pk=article.pk).update(reconcile_checks=F("reconcile_checks") + 1)
    article.reconcile_checks += 1
    try:
        found = _find_publication(WechatClient.from_settings(), article)
    except (WechatQuotaExhausted, WechatPermanentError) as exc:
        _needs_person(article, f"the publish records could not be searched: {exc}")
    except (WechatTransientError, WechatRateLimited) as exc:
        # A search is a question, harmless to ask again: a blip must not leave the article
        # checking behind a dead job. The searches and the deadline bound the asking.
        if timezone.now() >= _deadline(article):
            _needs_person(article, f"{_waited(article)}; the last search failed: {exc}")
        reason = (f"freepublish/submit outcome unknown: freepublish/batchget failed ({exc}); searching again later "
                  "(never submitted again while it may be publishing)")
        note(article, reason)
        raise Snooze(_next_check_at(article), reason) from None
    if found is not None:
        article_id, url = found
        WechatArticle.objects.filter(pk=article.pk, state=ArticleState.CHECKING).update(
            state=ArticleState.PUBLISHED, article_id=article_id,
            article_url=safe_article_url(url, source="freepublish/batchget")[:1024], publish_status=0,
            published_at=timezone.now(), last_error="")
        logger.info("wechat publish: news %s: the unanswered submit was accepted; published as %s", article.news_id,
                    article_id)
        return f"published: found in freepublish/batchget as article {article_id}"
    # Not there is no proof of anything: WeChat may still be checking it (publish_status 1
    # for up to hours, the draft still in the box). Look again later; the push may come first.
    if timezone.now() >= _deadline(article):
        _needs_person(article, f"not found in freepublish/batchget after {article.reconcile_checks} searches and "
                               f"{_waited(article)}, and no PUBLISHJOBFINISH push matched it")
    reason = (f"freepublish/submit outcome unknown: not in freepublish/batchget yet (search "
              f"{article.reconcile_checks} of {settings.WECHAT_RECONCILE_MAX_CHECKS}); WeChat may still be "
              "publishing it, so it is not submitted again; waiting for the push or the records, then a person")
    note(article, reason)
    raise Snooze(_next_check_at(article), reason)


def _find_publication(client: WechatClient, article: WechatArticle) -> tuple[str, str] | None:
    since = (article.submitted_at or article.drafted_at or article.created_at) - CLOCK_SLACK
    for item in pages(client.list_published):
        if is_ours(item, article, since=since):
            news_items = (item.get("content") or {}).get("news_item") or [{}]
            return str(item.get("article_id") or ""), str(news_items[0].get("url") or "")
    return None


def _needs_person(article: WechatArticle, why: str):
    message = (f"freepublish/submit outcome unknown: {why}. Submitting again could publish twice: check the "
               "account's publish records, then in the admin use 'it was published', 'it was not published' "
               "or 'check WeChat again'")
    moved = WechatArticle.objects.filter(
        pk=article.pk, state__in=[ArticleState.CHECKING, ArticleState.SUBMITTING]).update(
        state=ArticleState.UNKNOWN, last_error=message[:2000])
    logger.error("wechat publish: news %s: %s", article.news_id, message)
    if moved:
        alert_person(article, message)
    raise PermanentError(message)


def _poll(article: WechatArticle) -> str:
    """Ask freepublish/get how publishing goes, backing off up to WECHAT_POLL_MAX_INTERVAL and
    within the daily budget, until WECHAT_PUBLISH_MAX_WAIT after the submit; then a person."""
    deadline = _deadline(article)
    if not spend_daily_budget("freepublish/get", settings.WECHAT_POLLS_PER_DAY):
        _wait_for_wechat(article, deadline, next_quota_reset(), (
            f"publish {article.publish_id}: today's WECHAT_POLLS_PER_DAY ({settings.WECHAT_POLLS_PER_DAY}) "
            "freepublish/get calls are spent; polling again tomorrow (the push can settle it before)"),
            last="today's freepublish/get calls (WECHAT_POLLS_PER_DAY) are spent")
    WechatArticle.objects.filter(pk=article.pk).update(polls=F("polls") + 1)
    polls = article.polls + 1
    with as_job_errors(article):
        client = WechatClient.from_settings()
        try:
            data = client.get_publish_status(article.publish_id)
        except WechatQuotaExhausted as exc:
            _wait_for_wechat(article, deadline, next_quota_reset(), f"publish {article.publish_id}: {exc}",
                             last=str(exc))
        except (WechatTransientError, WechatRateLimited) as exc:
            # freepublish/get is a question, harmless to ask again: a blip must not leave the
            # article publishing behind a dead job. The deadline bounds the asking.
            _wait_for_wechat(article, deadline, _next_poll_at(polls),
                             f"publish {article.publish_id}: freepublish/get failed ({exc}); asking again later",
                             last=f"the last poll failed: {exc}")
        except WechatPermanentError as exc:
            # A refusal of the question (the caller's IP no longer whitelisted, a frozen secret)
            # says nothing of the publication WeChat accepted: marking it failed would invite a
            # second submit, a second publication. A person looks at the publish records.
            _publishing_needs_person(article, f"freepublish/get refused the question ({exc})")
    detail = data.get("article_detail") or {}
    apply_publish_result(
        article.publish_id, status=int(data.get("publish_status", -1)), article_id=str(data.get("article_id") or ""),
        urls=[item.get("article_url", "") for item in detail.get("item") or []], fail_idx=data.get("fail_idx") or [])
    article.refresh_from_db(fields=["state", "last_error"])
    if article.state == ArticleState.PUBLISHING:  # still publishing
        _wait_for_wechat(article, deadline, _next_poll_at(polls),
                         f"publish {article.publish_id} still in progress after {polls} polls; waiting for WeChat "
                         f"until {timezone.localtime(deadline):%Y-%m-%d %H:%M %Z} (WECHAT_PUBLISH_MAX_WAIT)",
                         last=f"still publishing (publish_status 1) at poll {polls}")
    if article.state == ArticleState.FAILED:
        raise PermanentError(article.last_error)
    return f"published: {article.publish_id}"


def _next_poll_at(polls: int) -> datetime:
    wait = min(settings.WECHAT_POLL_FIRST * 2 ** min(polls, 20), settings.WECHAT_POLL_MAX_INTERVAL)
    return timezone.now() + timedelta(seconds=wait)


def _wait_for_wechat(article: WechatArticle, deadline: datetime, until: datetime, reason: str, *, last: str):
    """Snooze until `until`, never past the deadline; at the deadline, a person (told `last`)."""
    if timezone.now() >= deadline:
        _publishing_needs_person(article, last)
    note(article, reason)
    raise Snooze(min(until, deadline), reason)


def _publishing_needs_person(article: WechatArticle, last: str):
    message = (f"publish {article.publish_id}: {_waited(article)}; {last}. WeChat accepted the submit and may "
               "still be checking it. Look in the account's publish records, then in the admin choose 'it WAS "
               "published', 'search WeChat's publish records again' (asks freepublish/get about this publish_id "
               "again, with a new wait), or, only if it failed, 'it was NOT published, submit again'")
    moved = WechatArticle.objects.filter(pk=article.pk, state=ArticleState.PUBLISHING).update(
        state=ArticleState.UNKNOWN, last_error=message[:2000])
    logger.error("wechat publish: news %s: %s", article.news_id, message)
    if moved:
        alert_person(article, message)
    # Dead, as for an unknown submit outcome: the dead-jobs alert stays up until a person acts.
    raise PermanentError(message)
