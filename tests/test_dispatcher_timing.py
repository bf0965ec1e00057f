"""The dispatcher's pace: it sleeps until the earliest known run_at or schedule slot,
at most JOBS_DISPATCH_INTERVAL, so a job known ahead starts at its run_at rather than up to an
interval after it; and an idle pass costs one statement, not a locking transaction."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import clock
from jobs.dispatcher import Dispatcher, next_due_times
from jobs.models import Job, JobState

pytestmark = pytest.mark.django_db(transaction=True)


def scheduled(run_at, state=JobState.SCHEDULED) -> Job:
    return Job.objects.create(job_type="system:noop", queue="default", payload={}, state=state,
                              timeout=60, run_at=run_at)


def settled() -> Dispatcher:
    """A dispatcher past its first pass, so the once-a-second chores are not due."""
    dispatcher = Dispatcher("timing")
    dispatcher.tick()
    return dispatcher


def test_an_idle_pass_is_one_statement_and_sleeps_the_interval():
    dispatcher = settled()
    with CaptureQueriesContext(connection) as queries:
        pause = dispatcher.tick()
    assert [q["sql"] for q in queries] == [queries[0]["sql"]] and len(queries) == 1
    assert pause == pytest.approx(settings.JOBS_DISPATCH_INTERVAL)


def test_it_sleeps_until_a_job_due_sooner_than_the_interval():
    interval = settings.JOBS_DISPATCH_INTERVAL
    dispatcher = settled()
    scheduled(clock.now() + timedelta(seconds=interval / 2))
    pause = dispatcher.tick()
    assert 0 < pause <= interval / 2


def test_after_forwarding_it_sleeps_until_the_next_job_not_a_whole_interval():
    interval = settings.JOBS_DISPATCH_INTERVAL
    dispatcher = settled()
    due = scheduled(clock.now() - timedelta(seconds=1), state=JobState.RETRY)
    scheduled(clock.now() + timedelta(seconds=interval / 2))
    pause = dispatcher.tick()
    assert Job.objects.get(pk=due.pk).state == JobState.PENDING
    assert 0 < pause <= interval / 2


def test_next_due_times_reads_the_earliest_scheduled_or_retry_job():
    now = clock.now()
    assert next_due_times() == (None, None)
    scheduled(now + timedelta(seconds=30))
    retry = scheduled(now + timedelta(seconds=10), state=JobState.RETRY)
    scheduled(now + timedelta(seconds=5), state=JobState.PENDING)  # not the dispatcher's
    next_job, _ = next_due_times()
    assert next_job == Job.objects.get(pk=retry.pk).run_at
