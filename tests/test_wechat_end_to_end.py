"""News to WeChat through real qcluster workers and the fake WeChat over HTTP: the whole way,
the push that settles a publish, and a worker killed in the middle of the one call that must
never be repeated."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.types import WECHAT_DRAFT_CREATION, WECHAT_PUBLISHING
from news.factories import NewsFactory
from news.models import NewsStatus
from news.services import news_publish
from tests.conftest import wait_for
from tests.wechat_fake import DEFAULT_THUMB, callback, fake_wechat, publish_event_xml, wechat_env  # noqa: F401
from wechat.models import ArticleState, WechatArticle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def article_in(news, *states):
    return WechatArticle.objects.filter(news=news, state__in=states).first()


def test_a_scheduled_news_item_reaches_wechat_through_the_workers(start_cluster, fake_wechat):
    fake_wechat.script("draft/add", -1)  # WeChat busy once: the engine retries the draft job
    fake_wechat.publish_after_gets = 1
    start_cluster(queues=["news", "wechat"], env=wechat_env(
        fake_wechat, WECHAT_DEFAULT_THUMB_MEDIA_ID=DEFAULT_THUMB, WECHAT_POLL_FIRST=0.5))
    news = NewsFactory(status=NewsStatus.SCHEDULED, scheduled_at=timezone.now() + timedelta(seconds=1),
                       push_to_wechat=True, title="周末活动")

    article = wait_for(lambda: article_in(news, ArticleState.PUBLISHED, ArticleState.FAILED), 40,
                       message="the article to be published on WeChat")

    assert article.state == ArticleState.PUBLISHED, article.last_error
    assert article.article_url.startswith("https://mp.weixin.qq.com/s/")
    news.refresh_from_db()
    took = (article.published_at - news.published_at).total_seconds()
    print(f"news published -> WeChat article published: {took:.2f} s")
    draft_job = Job.objects.get(news_id=news.pk, job_type=WECHAT_DRAFT_CREATION)
    assert draft_job.state == JobState.COMPLETED and draft_job.attempts == 2
    assert "errcode -1" in draft_job.errors[0]["error"]
    publish_job = wait_for(lambda: Job.objects.filter(news_id=news.pk, job_type=WECHAT_PUBLISHING,
                                                      state=JobState.COMPLETED).first(), 10,
                           message="the publishing job to complete")
    assert publish_job.result == f"published: {article.publish_id}"
    assert fake_wechat.count("freepublish/submit") == 1 and fake_wechat.count("draft/add") == 2
    [sent] = next(iter(fake_wechat.publishes.values()))["articles"]
    assert sent["title"] == "周末活动"


def test_a_publish_push_lets_the_waiting_job_finish_at_once(start_cluster, fake_wechat, client):
    start_cluster(queues=["wechat"], env=wechat_env(
        fake_wechat, WECHAT_DEFAULT_THUMB_MEDIA_ID=DEFAULT_THUMB, WECHAT_POLL_FIRST=300))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    article = wait_for(lambda: article_in(news, ArticleState.PUBLISHING), 20, message="the draft to be submitted")
    job = wait_for(lambda: Job.objects.filter(job_type=WECHAT_PUBLISHING, news_id=news.pk,
                                              state=JobState.SCHEDULED).first(), 10, message="the job to wait")
    assert job.run_at > timezone.now() + timedelta(seconds=200)  # it would poll in 5 minutes

    fake_wechat.settle(article.publish_id, 0)
    pushed_at = time.monotonic()
    pub = fake_wechat.publishes[int(article.publish_id)]
    callback(client, publish_event_xml(article.publish_id, 0, pub["article_id"], pub["urls"][0]))

    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.COMPLETED).exists(), 15,
             message="the woken job to complete")
    print(f"push -> publishing job completed: {time.monotonic() - pushed_at:.2f} s")
    assert article_in(news, ArticleState.PUBLISHED)
    assert fake_wechat.count("freepublish/get") == 0  # no poll was spent


def test_a_worker_killed_during_submit_never_leads_to_a_second_submit(start_cluster, fake_wechat):
    env = wechat_env(fake_wechat, WECHAT_DEFAULT_THUMB_MEDIA_ID=DEFAULT_THUMB, JOBS_LEASE_SECONDS=5,
                     JOBS_HEARTBEAT_SECONDS=1)
    fake_wechat.script("freepublish/submit", ("delay", 6))  # WeChat accepts it, answers late
    first = start_cluster(queues=["wechat"], env=env)
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    wait_for(lambda: fake_wechat.count("freepublish/submit") == 1, 20, message="the submit to reach WeChat")

    first.kill()  # the host dies while WeChat is still answering
    assert article_in(news, ArticleState.SUBMITTING)
    start_cluster(queues=["wechat"], env=env)

    job = wait_for(lambda: Job.objects.filter(job_type=WECHAT_PUBLISHING, news_id=news.pk,
                                              state=JobState.DEAD).first(), 40,
                   message="the publishing job to stop for a person")
    assert "outcome unknown" in job.last_error and "worker lost" in job.errors[0]["error"]
    assert article_in(news, ArticleState.UNKNOWN)
    assert fake_wechat.count("freepublish/submit") == 1
    assert len(fake_wechat.publishes) == 1  # it was published once, as a second submit would have doubled
