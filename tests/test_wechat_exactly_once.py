"""Exactly one publication whatever WeChat's timing, through real qcluster workers,
the real callback URL (live server) and the fake WeChat over HTTP, with WeChat's documented
timing: a publication stays at publish_status 1 for a while, the draft stays in the draft box
meanwhile, freepublish/batchget lists only successes, and the PUBLISHJOBFINISH push is
retried. Each test counts drafts and submits.

The intervals are short (reconcile search after 1 s, then every 2 s) and publishing slower
than all of them, so that an unsafe rule would have submitted again several times."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest
import requests

from jobs.models import Job, JobState
from news.factories import NewsFactory
from news.services import news_publish
from tests.conftest import wait_for
from tests.wechat_fixtures import CALLBACK_TOKEN, fake_wechat, wechat_env  # noqa: F401
from wechat.models import ArticleState, WechatArticle
from wechat.scheduling import WECHAT_PUBLISHING, WECHAT_PUSH_MATCH

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
FAST = {"WECHAT_RECONCILE_DELAY": 1, "WECHAT_POLL_MAX_INTERVAL": 2, "WECHAT_ENCODING_AES_KEY": KEY}
KILL_ENV = {"JOBS_LEASE_SECONDS": 5, "JOBS_HEARTBEAT_SECONDS": 1}


@pytest.fixture
def wechat(fake_wechat, live_server, settings):
    """The fake pushing to the live server's callback URL, safe mode unless a test says otherwise."""
    settings.WECHAT_ENCODING_AES_KEY = KEY
    settings.WECHAT_CALLBACK_ALLOW_PLAINTEXT = True
    fake_wechat.callback_url, fake_wechat.callback_token = f"{live_server.url}/wechat/callback", CALLBACK_TOKEN
    fake_wechat.callback_mode, fake_wechat.encoding_aes_key = "safe", KEY
    return fake_wechat


def article_in(news, *states):
    return WechatArticle.objects.filter(news=news, state__in=states).first()


def counts(fake) -> dict:
    return {"draft/add": fake.count("draft/add"), "freepublish/submit": fake.count("freepublish/submit"),
            "publications": len(fake.publishes), "drafts in the box": len(fake.drafts)}


def push_answers(fake) -> list:
    return [(p["http_status"], p["answer"]) for p in fake.pushes]


def test_a_lost_submit_answer_while_publishing_outlasts_every_check_is_submitted_once(start_cluster, wechat):
    wechat.publish_seconds = 14  # longer than every retry and reconcile interval below
    wechat.script("freepublish/submit", "drop")  # accepted; the answer never arrives
    start_cluster(queues=["wechat"], env=wechat_env(wechat, WECHAT_RECONCILE_MAX_CHECKS=3, **FAST))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)

    # Three searches of freepublish/batchget find nothing (it is still publishing, the draft
    # still in the box): the article goes to a person, nothing is submitted again.
    unknown = wait_for(lambda: article_in(news, ArticleState.UNKNOWN), 60, message="the article to need a person")
    assert "Submitting again could publish twice" in unknown.last_error
    assert counts(wechat) == {"draft/add": 1, "freepublish/submit": 1, "publications": 1, "drafts in the box": 1}
    # The article commits inside the handler; its job goes dead in the next statement.
    dead = wait_for(lambda: Job.objects.filter(job_type=WECHAT_PUBLISHING, subject=f"news:{news.pk}",
                                               state=JobState.DEAD).first(), 20, message="the job to go dead")
    assert wechat.count("freepublish/batchget") == 3 and dead.attempts == 1

    # WeChat finishes and pushes a publish_id we never got: matched by the marker in its content.
    article = wait_for(lambda: article_in(news, ArticleState.PUBLISHED), 60, message="the push to settle it")
    [pub] = wechat.publishes.values()
    assert article.publish_id == str(pub["publish_id"]) and article.article_url == pub["urls"][0]
    assert counts(wechat) == {"draft/add": 1, "freepublish/submit": 1, "publications": 1, "drafts in the box": 0}
    match = wait_for(lambda: Job.objects.filter(job_type=WECHAT_PUSH_MATCH, state=JobState.COMPLETED).first(), 30,
                     message="the match job to complete")
    assert "marker found" in match.result and wechat.count("freepublish/getarticle") == 1
    assert push_answers(wechat) == [(200, "success")]


def test_a_lost_submit_answer_and_a_failed_publication_show_the_failure_without_a_second_submit(start_cluster,
                                                                                                 wechat):
    wechat.publish_seconds, wechat.publish_status = 8, 3  # slow, then a normal failure
    wechat.script("freepublish/submit", "drop")
    start_cluster(queues=["wechat"], env=wechat_env(wechat, WECHAT_RECONCILE_MAX_CHECKS=30, **FAST))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    checking = wait_for(lambda: article_in(news, ArticleState.CHECKING), 30, message="the submit to go unanswered")
    job = wait_for(lambda: Job.objects.filter(job_type=WECHAT_PUBLISHING, state=JobState.SCHEDULED,
                                              waiting_reason__contains="not submitted again").first(), 30,
                   message="the job to wait, saying why")
    assert checking.publish_id == ""

    article = wait_for(lambda: article_in(news, ArticleState.UNKNOWN), 60, message="the failure push to arrive")

    assert article.publish_status == 3 and "publishing failed (publish_status 3)" in article.last_error
    assert counts(wechat) == {"draft/add": 1, "freepublish/submit": 1, "publications": 1, "drafts in the box": 1}
    job = wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.DEAD).first(), 30,
                   message="the publishing job to go dead (the dead-jobs alert)")
    assert "publishing failed" in job.last_error
    assert push_answers(wechat) == [(200, "success")]


@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
def test_a_push_in_each_mode_repeated_three_times_settles_the_article_once(start_cluster, wechat, mode):
    wechat.callback_mode = mode
    start_cluster(queues=["wechat"], env=wechat_env(wechat, WECHAT_POLL_FIRST=300, **FAST))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    article = wait_for(lambda: article_in(news, ArticleState.PUBLISHING), 30, message="the submit")

    wechat.settle(article.publish_id, 0)  # pushed (signed, encrypted in compatible and safe mode)
    wait_for(lambda: wechat.pushes, 15, message="the push")
    for _ in range(2):  # WeChat's retries: the same signed request again
        wechat.push_again(article.publish_id)

    job = wait_for(lambda: Job.objects.filter(job_type=WECHAT_PUBLISHING, subject=f"news:{news.pk}",
                                              state=JobState.COMPLETED).first(), 30, message="the job to complete")
    assert push_answers(wechat) == [(200, "success")] * 3
    article = article_in(news, ArticleState.PUBLISHED)
    assert article.article_url == wechat.publishes[int(article.publish_id)]["urls"][0]
    assert job.attempts == 1 and Job.objects.filter(job_type=WECHAT_PUBLISHING).count() == 1
    assert not Job.objects.filter(job_type=WECHAT_PUSH_MATCH).exists()
    assert counts(wechat) == {"draft/add": 1, "freepublish/submit": 1, "publications": 1, "drafts in the box": 0}
    assert wechat.count("freepublish/get") == 0  # settled by the push, no poll spent


def test_a_forged_or_stale_push_is_refused_and_the_real_one_settles_it(start_cluster, wechat, live_server):
    start_cluster(queues=["wechat"], env=wechat_env(wechat, WECHAT_POLL_FIRST=300, **FAST))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    article = wait_for(lambda: article_in(news, ArticleState.PUBLISHING), 30, message="the submit")
    from devtools.wechat_fake import publish_event_xml

    forged_event = publish_event_xml(article.publish_id, 3)
    url = f"{live_server.url}/wechat/callback"
    query, body = wechat.signed_message(forged_event, str(int(time.time())), "forged1")
    query["msg_signature"] = "0" * 40  # without the token, the ciphertext cannot be signed
    forged = requests.post(f"{url}?{urlencode(query)}", data=body, timeout=10)
    query, body = wechat.signed_message(forged_event, str(int(time.time()) - 3600), "stale1")  # a day-old capture
    stale = requests.post(f"{url}?{urlencode(query)}", data=body, timeout=10)

    assert (forged.status_code, forged.text) == (403, "bad msg_signature")
    assert stale.status_code == 403 and "WECHAT_CALLBACK_WINDOW" in stale.text
    assert article_in(news, ArticleState.PUBLISHING) and not Job.objects.filter(job_type=WECHAT_PUSH_MATCH).exists()

    wechat.settle(article.publish_id, 0)
    assert wait_for(lambda: article_in(news, ArticleState.PUBLISHED), 30, message="the real push")
    assert counts(wechat) == {"draft/add": 1, "freepublish/submit": 1, "publications": 1, "drafts in the box": 0}


def test_a_worker_killed_during_submit_while_publishing_is_slow_ends_in_one_publication(start_cluster, wechat):
    env = wechat_env(wechat, WECHAT_RECONCILE_MAX_CHECKS=30, **FAST, **KILL_ENV)
    wechat.publish_seconds = 16  # still publishing long after the lease has run out and checks began
    wechat.script("freepublish/submit", ("delay", 6))  # WeChat accepts it, answers late
    first = start_cluster(queues=["wechat"], env=env)
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    wait_for(lambda: wechat.publishes, 30, message="the submit to reach WeChat")

    first.kill()  # SIGKILL while WeChat is still answering
    assert article_in(news, ArticleState.SUBMITTING)
    start_cluster(queues=["wechat"], env=env)

    wait_for(lambda: Job.objects.filter(job_type=WECHAT_PUBLISHING, state=JobState.SCHEDULED,
                                        waiting_reason__contains="not submitted again").exists(), 40,
             message="the new worker to search and wait without submitting")
    assert counts(wechat)["freepublish/submit"] == 1 and article_in(news, ArticleState.CHECKING)

    article = wait_for(lambda: article_in(news, ArticleState.PUBLISHED), 60, message="the push to settle it")
    [pub] = wechat.publishes.values()
    assert article.publish_id == str(pub["publish_id"])
    assert counts(wechat) == {"draft/add": 1, "freepublish/submit": 1, "publications": 1, "drafts in the box": 0}
    job = wait_for(lambda: Job.objects.filter(job_type=WECHAT_PUBLISHING, state=JobState.COMPLETED).first(), 30,
                   message="the publishing job to complete")
    assert "worker lost" in job.errors[0]["error"]
