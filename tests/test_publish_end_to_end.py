"""The first end-to-end path: save a scheduled News -> job -> real qcluster publishes it."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobState
from news.models import News, NewsStatus
from news.factories import NewsFactory
from tests.conftest import slack, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def test_a_scheduled_news_item_is_published_by_the_worker_when_due(start_cluster):
    start_cluster(queues=["news"])
    due = timezone.now() + timedelta(seconds=2)
    news = NewsFactory(status=NewsStatus.SCHEDULED, scheduled_at=due)
    job = Job.objects.get(subject=f"news:{news.pk}", job_type="news:scheduled_publisher")
    assert job.state == JobState.SCHEDULED and job.run_at == due

    published = wait_for(lambda: News.objects.filter(pk=news.pk, status=NewsStatus.PUBLISHED).first(), 20,
                         message="the item to be published")
    assert published.published_at >= due  # never early
    assert published.published_at - due < timedelta(seconds=slack(2))
    # The item commits inside the handler; the job's completion is the next statement.
    job = wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.COMPLETED).first(), 10,
                   message="the job to complete")
    assert job.attempts == 1
