"""News to WeChat through real qcluster workers and the fake WeChat over real HTTP: the whole
way, WeChat busy, a token expiring mid-flow, a daily quota used up, a refused field, a worker
SIGKILLed in the middle of the two calls that must not be repeated, a submit whose reply is
lost, and the PUBLISHJOBFINISH push arriving at the callback URL."""

import time
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from jobs.models import Job, JobState
from news.factories import NewsFactory
from news.models import NewsStatus
from news.services import news_publish
from tests.conftest import wait_for
from tests.wechat_fixtures import CALLBACK_TOKEN, fake_wechat, publish_event_xml, signature, wechat_env  # noqa: F401
from wechat.models import ArticleState, WechatArticle
from wechat.services import DEFAULT_THUMB_PATH, next_quota_reset
from wechat.scheduling import WECHAT_DRAFT_CREATION, WECHAT_PUBLISHING, schedule_wechat_draft_creation

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

KILL_ENV = {"JOBS_LEASE_SECONDS": 5, "JOBS_HEARTBEAT_SECONDS": 1}


def article_in(news, *states):
    return WechatArticle.objects.filter(news=news, state__in=states).first()


def settled(news, timeout=30) -> WechatArticle:
    return wait_for(lambda: article_in(news, ArticleState.PUBLISHED, ArticleState.FAILED, ArticleState.UNKNOWN),
                    timeout, message="the article to reach a final state")


def job_of(news, job_type, *states, timeout=15) -> Job:
    return wait_for(lambda: Job.objects.filter(subject=f"news:{news.pk}", job_type=job_type, state__in=states).first(),
                    timeout, message=f"the {job_type} job to be {'/'.join(states)}")


def results(fake, api) -> list:
    return [call["result"].get("errcode", 0) if call.get("result") else None for call in fake.calls_to(api)]


def test_a_scheduled_news_item_reaches_wechat_through_the_workers(start_cluster, fake_wechat):
    fake_wechat.publish_polls = 2  # publishing takes two polls
    start_cluster(queues=["news", "wechat"], env=wechat_env(fake_wechat))
    # No cover image, as the quick start's demo items: the default cover shipped in the project.
    news = NewsFactory(status=NewsStatus.SCHEDULED, scheduled_at=timezone.now() + timedelta(seconds=1),
                       push_to_wechat=True, title="周末活动")

    article = settled(news, 40)

    assert article.state == ArticleState.PUBLISHED, article.last_error
    [pub] = fake_wechat.publishes.values()
    assert article.article_url == pub["urls"][0] and article.article_id == pub["article_id"]
    assert article.publish_id == str(pub["publish_id"]) and article.polls == 2
    news.refresh_from_db()
    took = (article.published_at - news.published_at).total_seconds()
    print(f"news published -> WeChat article published: {took:.2f} s")
    assert job_of(news, WECHAT_DRAFT_CREATION, JobState.COMPLETED).attempts == 1
    assert job_of(news, WECHAT_PUBLISHING, JobState.COMPLETED).result == f"published: {article.publish_id}"
    [sent] = pub["articles"]
    assert sent["title"] == "周末活动"
    assert fake_wechat.materials[sent["thumb_media_id"]]["data"] == DEFAULT_THUMB_PATH.read_bytes()
    assert fake_wechat.count("freepublish/submit") == 1 and fake_wechat.count("draft/add") == 1


def test_wechat_busy_twice_then_the_draft_is_created_once_after_backoff(start_cluster, fake_wechat):
    fake_wechat.script("draft/add", -1, -1)  # "system busy" twice
    start_cluster(queues=["wechat"], env=wechat_env(fake_wechat, WECHAT_AUTO_PUBLISH=0))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)

    job = job_of(news, WECHAT_DRAFT_CREATION, JobState.COMPLETED, JobState.DEAD, timeout=30)

    assert job.state == JobState.COMPLETED and job.attempts == 3
    assert ["errcode -1" in e["error"] for e in job.errors] == [True, True]
    assert results(fake_wechat, "draft/add") == [-1, -1, 0]
    at = [call["at"] for call in fake_wechat.calls_to("draft/add")]
    assert at[1] - at[0] >= 0.9 and at[2] - at[1] >= 1.9  # the engine's backoff: 1 s, then 2 s
    assert len(fake_wechat.drafts) == 1 and article_in(news, ArticleState.DRAFTED)


def test_a_token_expiring_mid_flow_is_replaced_without_spending_a_retry(start_cluster, fake_wechat):
    start_cluster(queues=["wechat"], env=wechat_env(fake_wechat, WECHAT_POLL_FIRST=3))
    fake_wechat.publish_polls = 1
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    wait_for(lambda: article_in(news, ArticleState.PUBLISHING), 20, message="the draft to be submitted")

    fake_wechat.expire_token()  # the workers' cached token dies before the poll

    article = settled(news)
    assert article.state == ArticleState.PUBLISHED, article.last_error
    assert results(fake_wechat, "freepublish/get") == [42001, 0]
    assert fake_wechat.count("stable_token") == 2
    job = job_of(news, WECHAT_PUBLISHING, JobState.COMPLETED)
    assert job.attempts == 1 and job.errors == []


def test_an_exhausted_daily_quota_waits_for_the_reset_without_spending_retries(start_cluster, fake_wechat, clear_of_local_midnight):
    fake_wechat.exhaust_quota("draft/add")
    start_cluster(queues=["wechat"], env=wechat_env(fake_wechat, WECHAT_AUTO_PUBLISH=0))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)

    job = job_of(news, WECHAT_DRAFT_CREATION, JobState.SCHEDULED)
    assert job.run_at == next_quota_reset() and job.attempts == 0 and job.errors == []
    assert "45009" in job.waiting_reason and article_in(news, ArticleState.PENDING)

    fake_wechat.reset_quotas()  # midnight in Beijing
    schedule_wechat_draft_creation(news.pk)  # ...and the job's time has come

    job = job_of(news, WECHAT_DRAFT_CREATION, JobState.COMPLETED)
    assert job.attempts == 1 and results(fake_wechat, "draft/add") == [45009, 0]


def test_a_field_wechat_refuses_kills_the_job_at_once_with_its_reason(start_cluster, fake_wechat):
    # Our limit looser than WeChat's (sources disagree on them), so WeChat is the one refusing.
    start_cluster(queues=["wechat"], env=wechat_env(fake_wechat, WECHAT_TITLE_MAX_CHARS=64, WECHAT_TITLE_MAX_BYTES=256))
    news = NewsFactory(push_to_wechat=True, title="标题" * 20)
    news_publish(news_id=news.pk)

    job = job_of(news, WECHAT_DRAFT_CREATION, JobState.DEAD)

    assert job.attempts == 1 and "draft/add: errcode 45003: title size out of limit" in job.last_error
    article = article_in(news, ArticleState.FAILED)
    assert "errcode 45003" in article.last_error
    assert fake_wechat.count("draft/add") == 1


def test_a_worker_killed_during_draft_creation_leaves_exactly_one_draft(start_cluster, fake_wechat):
    env = wechat_env(fake_wechat, **KILL_ENV)
    fake_wechat.publish_polls = 1
    fake_wechat.script("draft/add", ("delay", 8))  # WeChat creates the draft, answers late
    first = start_cluster(queues=["wechat"], env=env)
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    wait_for(lambda: fake_wechat.drafts, 20, message="WeChat to accept draft/add")

    first.kill()  # before the answer arrives and is stored
    assert article_in(news, ArticleState.PENDING).draft_requested_at is not None
    start_cluster(queues=["wechat"], env=env)

    article = settled(news, 40)
    assert article.state == ArticleState.PUBLISHED, article.last_error
    assert fake_wechat.count("draft/add") == 1 and fake_wechat.count("draft/batchget") == 1
    [pub] = fake_wechat.publishes.values()
    assert pub["media_id"] == article.draft_media_id and not fake_wechat.drafts
    job = job_of(news, WECHAT_DRAFT_CREATION, JobState.COMPLETED)
    assert "worker lost" in job.errors[0]["error"] and "found in the draft box" in job.result


def test_a_submit_whose_reply_is_lost_ends_in_exactly_one_publication(start_cluster, fake_wechat):
    fake_wechat.publish_seconds = 0.5
    fake_wechat.script("freepublish/submit", "drop")  # accepted, the reply never arrives
    start_cluster(queues=["wechat"], env=wechat_env(fake_wechat))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)

    article = settled(news)

    assert article.state == ArticleState.PUBLISHED, article.last_error
    [pub] = fake_wechat.publishes.values()
    assert article.article_id == pub["article_id"] and article.article_url == pub["urls"][0]
    assert fake_wechat.count("freepublish/submit") == 1 and fake_wechat.count("freepublish/batchget") >= 1
    job = job_of(news, WECHAT_PUBLISHING, JobState.COMPLETED)
    assert job.result.startswith("published: found in freepublish/batchget") and job.errors == []


def test_a_worker_killed_during_submit_ends_in_exactly_one_publication(start_cluster, fake_wechat):
    env = wechat_env(fake_wechat, **KILL_ENV)
    fake_wechat.publish_seconds = 0.5
    fake_wechat.script("freepublish/submit", ("delay", 6))  # WeChat accepts it, answers late
    first = start_cluster(queues=["wechat"], env=env)
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    wait_for(lambda: fake_wechat.publishes, 20, message="the submit to reach WeChat")

    first.kill()  # the host dies while WeChat is still answering
    assert article_in(news, ArticleState.SUBMITTING)
    start_cluster(queues=["wechat"], env=env)

    article = settled(news, 40)
    assert article.state == ArticleState.PUBLISHED, article.last_error
    assert fake_wechat.count("freepublish/submit") == 1 and len(fake_wechat.publishes) == 1
    job = job_of(news, WECHAT_PUBLISHING, JobState.COMPLETED)
    assert "worker lost" in job.errors[0]["error"]


def test_the_publish_push_reaches_the_callback_url_and_finishes_the_job(start_cluster, fake_wechat, live_server):
    callback_url = f"{live_server.url}/wechat/callback"
    fake_wechat.callback_url, fake_wechat.callback_token = callback_url, CALLBACK_TOKEN
    start_cluster(queues=["wechat"], env=wechat_env(fake_wechat, WECHAT_POLL_FIRST=300))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    article = wait_for(lambda: article_in(news, ArticleState.PUBLISHING), 20, message="the draft to be submitted")
    job = job_of(news, WECHAT_PUBLISHING, JobState.SCHEDULED)
    assert job.run_at > timezone.now() + timedelta(seconds=200)  # it would poll in 5 minutes

    forged = requests.post(callback_url, params={"signature": signature("guess", "1", "2"), "timestamp": "1",
                                                 "nonce": "2"}, data=publish_event_xml(article.publish_id, 3))
    assert forged.status_code == 403 and article_in(news, ArticleState.PUBLISHING)

    pushed_at = time.monotonic()
    fake_wechat.settle(article.publish_id, 0)  # WeChat pushes PUBLISHJOBFINISH, signed
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.COMPLETED).exists(), 15,
             message="the woken job to complete")
    print(f"push -> publishing job completed: {time.monotonic() - pushed_at:.2f} s")
    article = article_in(news, ArticleState.PUBLISHED)
    assert article.article_url == fake_wechat.publishes[int(article.publish_id)]["urls"][0]
    assert [(p["publish_id"], p["status"], p["http_status"], p["answer"]) for p in fake_wechat.pushes] == [
        (int(article.publish_id), 0, 200, "success")]
    assert fake_wechat.count("freepublish/get") == 0  # no poll was spent
