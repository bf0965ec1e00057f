"""Several hosts, skewed clocks: due-ness is decided by the database's clock (jobs/clock.py),
so a host whose clock runs ahead does not start jobs early and one that runs behind does not
start them late. The skew is faked in this process with time-machine; MariaDB's clock is real."""

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine
from django.db import connection

from jobs import clock, scheduler
from jobs.dispatcher import Dispatcher
from jobs.models import Job, JobState
from news.factories import NewsFactory
from news.models import News, NewsStatus
from tests.conftest import wait_for
from news.jobs import handle_news_scheduled_publisher
from news.scheduling import NewsPublishPayload

pytestmark = pytest.mark.django_db(transaction=True)

SKEW = timedelta(seconds=30)


def db_now() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT UTC_TIMESTAMP(6)")
        return cursor.fetchone()[0].replace(tzinfo=dt_timezone.utc)


def skewed(delta: timedelta):
    """This process's wall clock moved by delta (still ticking); the next clock.now() measures."""
    clock.reset()
    return time_machine.travel(datetime.now(dt_timezone.utc) + delta, tick=True)


@pytest.fixture(autouse=True)
def fresh_offset():
    clock.reset()
    yield
    clock.reset()


def noop_job(run_at: datetime) -> Job:
    return Job.objects.create(job_type="system:noop", queue="default", payload={}, state=JobState.SCHEDULED,
                              timeout=60, run_at=run_at)


def test_a_dispatcher_whose_clock_runs_ahead_does_not_start_jobs_early():
    job = noop_job(db_now() + timedelta(seconds=2))
    with skewed(SKEW):
        Dispatcher("ahead").tick()
        assert Job.objects.get(pk=job.pk).state == JobState.SCHEDULED  # 30 s "late" locally, not due
        wait_for(lambda: Dispatcher("ahead").tick() is not None and
                 Job.objects.get(pk=job.pk).state == JobState.PENDING, 15, 0.05, "the job to become due")
        assert db_now() >= job.run_at
    assert abs((clock.offset() + SKEW).total_seconds()) < 1


def test_a_dispatcher_whose_clock_runs_behind_does_not_start_jobs_late():
    job = noop_job(db_now() - timedelta(seconds=0.5))
    with skewed(-SKEW):
        Dispatcher("behind").tick()
    assert Job.objects.get(pk=job.pk).state == JobState.PENDING


def test_enqueue_with_a_delay_is_timed_by_the_database_clock():
    with skewed(SKEW):
        job_id = scheduler.enqueue("system:noop", {}, delay=5)
    run_at = Job.objects.get(pk=job_id).run_at
    assert abs((run_at - (db_now() + timedelta(seconds=5))).total_seconds()) < 2


def test_a_worker_whose_clock_runs_behind_still_publishes_due_news():
    news = NewsFactory(status=NewsStatus.SCHEDULED, scheduled_at=db_now() - timedelta(seconds=1))
    job = Job.objects.filter(subject=f"news:{news.pk}").first()
    payload = NewsPublishPayload(news_id=news.pk, scheduled_at=news.scheduled_at)
    with skewed(-SKEW):
        assert handle_news_scheduled_publisher(payload, job) == "published"
    assert News.objects.get(pk=news.pk).status == NewsStatus.PUBLISHED
