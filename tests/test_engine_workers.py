"""The engine with real qcluster subprocesses: retries and backoff, dead letters, timeouts,
crash recovery, lost wake-ups, two clusters, graceful shutdown."""

import os
import signal
import time
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from jobs import broker, scheduler
from jobs.models import Job, JobState
from nextevent.redis import get_redis
from tests.conftest import slack, wait_for
from jobs.system import SYSTEM_NOOP
from news.scheduling import NEWS_SCHEDULED_PUBLISHER

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def finished(job_id, states=(JobState.COMPLETED, JobState.DEAD)):
    return Job.objects.filter(pk=job_id, state__in=states).first()


def wait_finished(job_id, timeout=40):
    return wait_for(lambda: finished(job_id), timeout, 0.1, f"job {job_id} to finish")


def runs(marker):
    return [r.decode() for r in get_redis().lrange(f"nextevent:noop:{marker}", 0, -1)]


def test_a_failing_job_is_retried_after_1_2_4_seconds_then_completes(start_cluster):
    start_cluster(queues=["default"])
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"fail_times": 3, "marker": "backoff"})
    job = wait_finished(job_id)
    assert job.state == JobState.COMPLETED and job.attempts == 4
    started = [datetime.fromisoformat(e["at"]) for e in job.errors]  # failure times of attempts 1-3
    assert [e["attempt"] for e in job.errors] == [1, 2, 3]
    gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:] + [job.started_at])]
    for gap, expected in zip(gaps, [1, 2, 4]):
        assert expected <= gap < expected + slack(1.5), gaps
    assert runs("backoff") == [f"{job_id}:{n}" for n in (1, 2, 3, 4)]


def test_a_job_that_keeps_failing_is_dead_after_max_retries_with_its_traceback(start_cluster):
    start_cluster(queues=["default"])
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"fail_times": 99})
    job = wait_finished(job_id)
    assert job.state == JobState.DEAD and job.attempts == 4  # 1 + 3 retries
    assert len(job.errors) == 4 and job.live_key is None
    assert "RuntimeError: demo failure 4 of 99" in job.last_error
    assert "Traceback (most recent call last)" in job.last_error


def test_a_permanent_error_is_dead_at_once(start_cluster):
    start_cluster(queues=["default"])
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"fail_times": 1, "permanent": True})
    job = wait_finished(job_id)
    assert (job.state, job.attempts) == (JobState.DEAD, 1)
    assert "PermanentError: demo permanent failure" in job.last_error


def test_a_timeout_is_a_failed_attempt(start_cluster):
    start_cluster(queues=["default"])
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 30, "marker": "slow"}, timeout=1)
    wait_for(lambda: Job.objects.filter(pk=job_id, attempts__gte=2).exists(), 30, 0.1, "a second attempt")
    job = Job.objects.get(pk=job_id)
    assert job.errors[0]["attempt"] == 1 and job.errors[0]["error"].startswith("timeout:")


def test_a_malformed_job_that_reaches_a_worker_goes_dead_at_once(start_cluster):
    start_cluster(queues=["news"])
    now = timezone.now()
    bad = Job.objects.create(job_type=NEWS_SCHEDULED_PUBLISHER, queue="news", payload={"news_id": "x"},
                             state=JobState.PENDING, timeout=60, run_at=now, dispatched_at=now)
    unknown = Job.objects.create(job_type="news:gone", queue="news", payload={}, state=JobState.PENDING,
                                 timeout=60, run_at=now, dispatched_at=now)
    broker.push([(bad.pk, "news", 60), (unknown.pk, "news", 60)])
    for job_id, text in ((bad.pk, "news_id: must be an integer"), (unknown.pk, "unknown job type 'news:gone'")):
        job = wait_finished(job_id)
        assert (job.state, job.attempts) == (JobState.DEAD, 1)
        assert text in job.last_error


def test_jobs_run_no_earlier_than_run_at_and_soon_after(start_cluster):
    start_cluster(queues=["default"])
    run_at = timezone.now() + timedelta(seconds=2)
    ids = scheduler.enqueue_many(SYSTEM_NOOP, [{}] * 20, run_at=run_at)
    for job_id in ids:
        job = wait_finished(job_id)
        assert job.state == JobState.COMPLETED
        lateness = (job.started_at - job.run_at).total_seconds()
        assert 0 <= lateness < slack(1.5), lateness


def test_a_sigkilled_worker_s_job_runs_again_within_30_seconds(start_cluster):
    cluster = start_cluster(queues=["default"])
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 3, "fail_times": 0, "marker": "kill"})
    job = wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE).first(), 20, 0.05, "active")
    # Killed inside the handler, not between the claim and it (a race a slow machine loses).
    wait_for(lambda: runs("kill") == [f"{job_id}:1"], 20, 0.05, "the first attempt's handler to start")
    pid = int(job.worker.rsplit(":", 1)[1])
    assert pid in cluster.worker_pids()
    os.kill(pid, signal.SIGKILL)
    killed_at = timezone.now()
    job = wait_finished(job_id, timeout=45)
    assert job.state == JobState.COMPLETED and job.attempts == 2
    assert job.started_at - killed_at < timedelta(seconds=slack(30))
    assert "worker lost: process" in job.errors[0]["error"]  # seen dead by its host (jobs/reaper.py)
    assert runs("kill") == [f"{job_id}:1", f"{job_id}:2"]


def test_pending_jobs_survive_redis_losing_its_lists(start_cluster):
    # No cluster yet: the wake-ups sit in Redis; then Redis loses everything.
    ids = scheduler.enqueue_many(SYSTEM_NOOP, [{"marker": "flush"}] * 10)
    assert broker.queue_depth("default") == 10
    get_redis().flushdb()  # FLUSHALL scoped to this test's database
    start_cluster(queues=["default"], env={"JOBS_REPUSH_AFTER": "2"})
    for job_id in ids:
        assert wait_finished(job_id, timeout=30).state == JobState.COMPLETED
    assert sorted(runs("flush")) == sorted(f"{i}:1" for i in ids)


def test_two_clusters_never_run_one_job_twice(start_cluster):
    start_cluster(queues=["default"])
    start_cluster(queues=["default"])
    ids = scheduler.enqueue_many(SYSTEM_NOOP, [{"marker": "two"}] * 200)
    # Duplicate every wake-up: both clusters now see each job twice.
    broker.push([(i, "default", 60) for i in ids])
    wait_for(lambda: Job.objects.filter(pk__in=ids, state=JobState.COMPLETED).count() == 200, 60, 0.2,
             "200 jobs to complete")
    seen = runs("two")
    assert len(seen) == 200 and sorted(seen) == sorted(f"{i}:1" for i in ids)
    workers = set(Job.objects.filter(pk__in=ids).values_list("worker", flat=True))
    assert len(workers) > 2  # work really was spread over both clusters' workers


def test_sigterm_to_the_process_group_lets_running_jobs_finish(start_cluster):
    cluster = start_cluster(queues=["default"])
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 3})
    wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE).exists(), 20, 0.05, "active")
    t0 = time.monotonic()
    assert cluster.stop(signal.SIGTERM, group=True, timeout=30) == 0
    assert time.monotonic() - t0 < slack(15)
    job = Job.objects.get(pk=job_id)
    assert job.state == JobState.COMPLETED and job.attempts == 1


def test_a_job_longer_than_the_grace_period_is_released_and_runs_again_later(start_cluster):
    cluster = start_cluster(queues=["default"], env={"JOBS_SHUTDOWN_GRACE": "2"})
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 20, "marker": "grace"})
    wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE).exists(), 20, 0.05, "active")
    assert cluster.stop(signal.SIGINT, group=True, timeout=30) == 0
    job = Job.objects.get(pk=job_id)
    assert (job.state, job.attempts) == (JobState.RETRY, 0)  # the interrupted attempt is not counted
    Job.objects.filter(pk=job_id).update(payload={"sleep": 0, "marker": "grace"})
    start_cluster(queues=["default"])
    job = wait_finished(job_id)
    assert job.state == JobState.COMPLETED and job.attempts == 1
