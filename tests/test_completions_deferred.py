"""Deferred completions: a cluster worker records a finished job in its next
claim's transaction, or JOBS_COMPLETION_FLUSH_MS later. Nothing is lost on a stop, a kill in
the window runs the job again (at least once), and a stale attempt is never recorded."""

import os
import signal
import threading
import time
from datetime import timedelta

import MySQLdb
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import scheduler, services
from jobs.models import Job, JobState
from jobs.services.running import Completion
from jobs.system import SYSTEM_NOOP
from nextevent.redis import get_redis
from tests.conftest import slack, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def pending_job() -> Job:
    run_at = timezone.now() - timedelta(seconds=1)
    return Job.objects.create(job_type="system:noop", queue="default", payload={}, state=JobState.PENDING,
                              timeout=60, run_at=run_at, dispatched_at=run_at)


def claimed(worker="w:1") -> Job:
    return services.job_claim(pending_job().pk, worker=worker)


def runs(marker):
    return [r.decode() for r in get_redis().lrange(f"nextevent:noop:{marker}", 0, -1)]


def test_the_next_claim_records_the_previous_completion_in_the_same_round_trip():
    services.job_claim(pending_job().pk, worker="warm:1")  # the connection's one-time set-up
    done, nxt = claimed(), pending_job()
    finished_at = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        job = services.job_claim(nxt.pk, worker="w:1", completing=[Completion(done, finished_at, "42")])
    assert len(queries) == 1
    assert job is not None and job.pk == nxt.pk and job.state == JobState.ACTIVE
    row = Job.objects.get(pk=done.pk)
    assert (row.state, row.result, row.finished_at, row.lease_expires_at) == (
        JobState.COMPLETED, "42", finished_at, None)


def test_a_stale_attempt_is_not_recorded_and_the_claim_still_happens():
    done = claimed()
    # Its lease was taken over meanwhile: attempt 2 runs elsewhere.
    Job.objects.filter(pk=done.pk).update(attempts=2, claims=2, worker="other:2")
    nxt = pending_job()
    job = services.job_claim(nxt.pk, worker="w:1", completing=[Completion(done, timezone.now(), "")])
    assert job is not None and Job.objects.get(pk=nxt.pk).state == JobState.ACTIVE
    row = Job.objects.get(pk=done.pk)
    assert (row.state, row.attempts, row.worker) == (JobState.ACTIVE, 2, "other:2")


def test_a_failed_claim_transaction_is_rolled_back_and_each_write_done_alone():
    done, nxt = claimed(), pending_job()
    db = settings.DATABASES["default"]
    other = MySQLdb.connect(host=db["HOST"] or "127.0.0.1", port=int(db["PORT"] or 3306), user=db["USER"],
                            passwd=db["PASSWORD"], db=db["NAME"])
    try:
        # Another session holds the completed job's row: the claim's transaction waits 1 s, fails.
        other.autocommit(False)
        other.cursor().execute("SELECT id FROM jobs_job WHERE id=%s FOR UPDATE", [done.pk])
        threading.Timer(1.5, other.rollback).start()
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout=1")
        job = services.job_claim(nxt.pk, worker="w:1", completing=[Completion(done, timezone.now(), "r")])
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout=DEFAULT")
        time.sleep(0.6)
        other.close()
    assert job is not None and job.pk == nxt.pk
    assert Job.objects.get(pk=done.pk).state == JobState.COMPLETED
    assert Job.objects.get(pk=nxt.pk).state == JobState.ACTIVE


@pytest.mark.cluster
def test_every_completion_is_recorded_when_work_stops_coming(start_cluster):
    start_cluster(queues=["default"], env={"JOBS_WORKERS_DEFAULT": "2", "JOBS_COMPLETION_FLUSH_MS": "200"})
    ids = scheduler.enqueue_many(SYSTEM_NOOP, [{"marker": "flushed"}] * 50)
    wait_for(lambda: Job.objects.filter(pk__in=ids, state=JobState.COMPLETED).count() == 50, slack(30), 0.1,
             "all 50 recorded, the last ones by the flusher")
    assert sorted(runs("flushed")) == sorted(f"{i}:1" for i in ids)


@pytest.mark.cluster
def test_a_stopping_cluster_records_what_its_workers_hold(start_cluster):
    # The longest allowed delay (half the lease): the stop comes well before the flusher would.
    cluster = start_cluster(queues=["default"], env={"JOBS_COMPLETION_FLUSH_MS": "5000"})
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"marker": "stop"})
    wait_for(lambda: runs("stop"), 20, 0.01, "the handler to run")
    assert cluster.stop(signal.SIGTERM, group=True, timeout=30) == 0
    job = Job.objects.get(pk=job_id)
    assert (job.state, job.attempts) == (JobState.COMPLETED, 1)
    assert runs("stop") == [f"{job_id}:1"]


@pytest.mark.cluster
def test_a_worker_killed_before_its_completion_is_written_runs_the_job_again(start_cluster):
    # One worker: a SIGKILLed idle worker makes jobs/cluster_guard.py replace the whole cluster,
    # which would also take a second worker's held completion (its job would run a third time).
    start_cluster(queues=["default"], env={"JOBS_COMPLETION_FLUSH_MS": "1000", "JOBS_WORKERS_DEFAULT": "1"})
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"marker": "window"})
    wait_for(lambda: runs("window"), 20, 0.01, "the handler to run")
    job = Job.objects.get(pk=job_id)
    if job.state != JobState.ACTIVE:
        pytest.skip("the machine was too slow to kill inside the 1 s window")
    os.kill(int(job.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    job = wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.COMPLETED).first(), slack(30), 0.1,
                   "the job to run again and complete")
    assert job.attempts == 2 and runs("window") == [f"{job_id}:1", f"{job_id}:2"]


def test_a_completion_that_cannot_be_written_does_not_stop_the_next_claim():
    done, nxt = claimed(), pending_job()
    # A lone surrogate cannot be encoded for MySQL: that completion fails every time.
    job = services.job_claim(nxt.pk, worker="w:1", completing=[Completion(done, timezone.now(), "\udc80")])
    assert job is not None and Job.objects.get(pk=nxt.pk).state == JobState.ACTIVE
    assert Job.objects.get(pk=done.pk).state == JobState.ACTIVE  # not recorded: runs again after its lease
