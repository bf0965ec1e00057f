"""The README's guarantees, each with a test that fails when the guarantee is broken on
purpose (scripts/critical_mutations.py writes each bug into a copy of the tree and checks
that the test named there goes red):

1. a healthy job longer than its lease keeps its lease (renewed) and runs once;
2. a job that kills its worker is not retried forever: dead after max_retries + 1 attempts;
3./4. a worker whose lease was taken over can neither fail nor complete the job;
5. the supervisor restarts a cluster that died alone;
6. a cluster whose supervisor was killed outright stops itself;
7. a publishing job run before scheduled_at publishes nothing.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta

import psutil
import pytest
from django.utils import timezone

from jobs import dispatcher, scheduler, services
from jobs.liveness import live_clusters
from jobs.models import Job, JobState
from jobs.system import SYSTEM_NOOP
from jobs.worker import run_job
from nextevent.redis import get_redis
from news.factories import ScheduledNewsFactory
from news.models import News, NewsStatus
from news.scheduling import NEWS_SCHEDULED_PUBLISHER
from tests.conftest import wait_for


def runs(marker):
    return [r.decode() for r in get_redis().lrange(f"nextevent:noop:{marker}", 0, -1)]


def wait_finished(job_id, timeout=60):
    return wait_for(lambda: Job.objects.filter(pk=job_id, state__in=[JobState.COMPLETED, JobState.DEAD]).first(),
                    timeout, 0.1, f"job {job_id} to finish")


# ---------------------------------------------------------------- 1, 2: leases with real workers


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_healthy_job_longer_than_its_lease_keeps_it_and_runs_once(start_cluster):
    # Lease 5 s renewed every second; the job runs 12 s, more than two leases.
    start_cluster(queues=["default"], env={"JOBS_LEASE_SECONDS": "5", "JOBS_HEARTBEAT_SECONDS": "1"})
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 12, "marker": "long"})
    first = wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE).first(), 20, 0.05, "active")
    # The lease really moves (renewed), not just long enough by luck.
    wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE,
                                        lease_expires_at__gt=first.lease_expires_at + timedelta(seconds=2)).exists(),
             10, 0.1, "the lease to be renewed")
    job = wait_finished(job_id)
    assert (job.state, job.attempts, job.errors) == (JobState.COMPLETED, 1, [])
    assert runs("long") == [f"{job_id}:1"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_job_that_kills_its_worker_every_time_ends_dead_after_max_retries_plus_one(start_cluster):
    start_cluster(queues=["default"], env={"JOBS_LEASE_SECONDS": "5", "JOBS_HEARTBEAT_SECONDS": "1"})
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"crash_times": 99, "marker": "crash"})

    def dead():
        job = Job.objects.get(pk=job_id)
        # Fail as soon as it has run more often than allowed, not at the timeout.
        assert job.attempts <= 4, f"attempt {job.attempts} of a job with max_retries=3 ({job.state})"
        return job if job.state in (JobState.COMPLETED, JobState.DEAD) else None

    job = wait_for(dead, 120, 0.1, f"job {job_id} to finish")
    assert job.max_retries == 3
    assert (job.state, job.attempts) == (JobState.DEAD, 4)
    assert [e["attempt"] for e in job.errors] == [1, 2, 3, 4]
    # Seen dead by its own host (jobs/reaper.py) or, failing that, by the lease running out.
    assert all(e["error"].startswith("worker lost: ") for e in job.errors)
    assert job.live_key is None and job.finished_at is not None
    assert runs("crash") == [f"{job_id}:{n}" for n in (1, 2, 3, 4)]


# ---------------------------------------------------------------- 3, 4: fencing (state machine)


def _taken_over() -> tuple[Job, Job]:
    """Worker A claims a job, its lease runs out, the dispatcher's reaper puts the job back
    and worker B claims it: returns (A's stale view, B's view)."""
    now = timezone.now()
    job = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.PENDING,
                             timeout=60, run_at=now, dispatched_at=now, max_retries=3)
    stale = services.job_claim(job.pk, worker="host-a:1")
    assert stale.attempts == 1
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert dispatcher.reap_expired_leases() == 1
    assert Job.objects.get(pk=job.pk).state == JobState.RETRY
    assert dispatcher.forward_due() == 1
    fresh = services.job_claim(job.pk, worker="host-b:2")
    assert fresh is not None and fresh.attempts == 2
    return stale, fresh


@pytest.mark.django_db(transaction=True)
def test_only_a_pending_job_can_be_claimed_and_only_once():
    now = timezone.now()
    ids = {state: Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=state, timeout=60,
                                     run_at=now, dispatched_at=now).pk
           for state in (JobState.PENDING, JobState.SCHEDULED, JobState.RETRY, JobState.DEAD, JobState.COMPLETED)}
    assert services.job_claim(ids[JobState.PENDING], worker="host-a:1").attempts == 1
    assert services.job_claim(ids[JobState.PENDING], worker="host-b:2") is None  # never twice at once
    for state in (JobState.SCHEDULED, JobState.RETRY, JobState.DEAD, JobState.COMPLETED):
        assert services.job_claim(ids[state], worker="host-b:2") is None, state
        assert Job.objects.filter(pk=ids[state]).values_list("state", "attempts").get() == (state, 0)
    assert Job.objects.get(pk=ids[JobState.PENDING]).worker == "host-a:1"


@pytest.mark.django_db(transaction=True)
def test_an_expired_lease_is_recorded_as_a_lost_attempt_and_runs_again_at_once():
    now = timezone.now()
    job = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.PENDING,
                             timeout=60, run_at=now, dispatched_at=now, max_retries=3)
    services.job_claim(job.pk, worker="host-a:1")
    expired = timezone.now() - timedelta(seconds=1)
    Job.objects.filter(pk=job.pk).update(lease_expires_at=expired)
    live = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.PENDING,
                              timeout=60, run_at=now, dispatched_at=now)
    services.job_claim(live.pk, worker="host-b:2")  # its lease is fine: not touched
    seen_by_another_dispatcher = Job.objects.get(pk=job.pk)
    reaped_at = timezone.now()
    assert dispatcher.reap_expired_leases() == 1
    row = Job.objects.get(pk=job.pk)
    assert (row.state, row.attempts, row.lease_expires_at, row.finished_at) == (JobState.RETRY, 1, None, None)
    assert reaped_at - timedelta(seconds=1) <= row.run_at <= timezone.now()  # again at once, no backoff
    assert row.errors == [{"attempt": 1, "at": row.errors[0]["at"], "worker": "host-a:1", "traceback": "",
                           "error": f"worker lost: lease expired at {expired.isoformat()} (worker host-a:1)",
                           "exception_class": "jobs.errors.WorkerLost"}]
    assert row.last_error == row.errors[0]["error"]
    assert Job.objects.get(pk=live.pk).state == JobState.ACTIVE
    # A second dispatcher that read the row before the first one reaped it changes nothing.
    assert services.job_lease_expired(seen_by_another_dispatcher, now=timezone.now()) is None
    assert Job.objects.get(pk=job.pk).errors == row.errors


@pytest.mark.django_db(transaction=True)
def test_a_snooze_waits_without_spending_an_attempt_or_recording_an_error():
    now = timezone.now()
    job = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.PENDING,
                             timeout=60, run_at=now, dispatched_at=now, last_error="RuntimeError: before")
    claimed = services.job_claim(job.pk, worker="w:1")
    until = timezone.now() + timedelta(hours=3)
    assert services.job_snooze(claimed, until=until, reason="quota used up " + "x" * 3000) is True
    row = Job.objects.get(pk=job.pk)
    assert (row.state, row.run_at, row.attempts, row.lease_expires_at) == (JobState.SCHEDULED, until, 0, None)
    assert row.waiting_reason == ("quota used up " + "x" * 3000)[:2000]
    assert (row.last_error, row.errors) == ("RuntimeError: before", [])
    assert services.job_snooze(claimed, until=until, reason="again") is False  # no longer running


def _row(job_id):
    return Job.objects.filter(pk=job_id).values("state", "attempts", "worker", "result", "last_error",
                                                "errors", "finished_at", "lease_expires_at").get()


@pytest.mark.django_db(transaction=True)
def test_a_stale_worker_cannot_fail_a_job_another_worker_now_runs():
    stale, fresh = _taken_over()
    before = _row(fresh.pk)
    assert services.job_fail(stale, error="RuntimeError: stale failure") == JobState.ACTIVE
    assert services.job_fail(stale, error="PermanentError: stale", permanent=True) == JobState.ACTIVE
    assert not services.job_snooze(stale, until=timezone.now() + timedelta(hours=1), reason="stale")
    assert _row(fresh.pk) == before
    assert before["state"] == JobState.ACTIVE and before["attempts"] == 2 and before["worker"] == "host-b:2"
    # The worker that holds it still can.
    assert services.job_complete(fresh, result="ok")
    assert Job.objects.get(pk=fresh.pk).state == JobState.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_a_stale_worker_cannot_complete_a_job_another_worker_now_runs():
    stale, fresh = _taken_over()
    before = _row(fresh.pk)
    assert services.job_complete(stale, result="stale result") is False
    assert _row(fresh.pk) == before
    assert before["state"] == JobState.ACTIVE and before["result"] == "" and before["finished_at"] is None
    # B's own failure is recorded as B's attempt 2.
    assert services.job_fail(fresh, error="RuntimeError: real") == JobState.RETRY
    row = Job.objects.get(pk=fresh.pk)
    assert [e["attempt"] for e in row.errors] == [1, 2] and row.errors[1]["error"] == "RuntimeError: real"


@pytest.mark.django_db(transaction=True)
def test_retry_now_does_not_let_a_stale_worker_move_the_new_run():
    """"Retry now" starts attempts again from 0, so attempt numbers repeat; the fence is the
    claim count, which never goes back."""
    stale, fresh = _taken_over()
    assert services.job_fail(fresh, error="PermanentError: gave up", permanent=True) == JobState.DEAD
    assert services.jobs_retry_now([fresh.pk]) == 1
    again = services.job_claim(fresh.pk, worker="host-c:3")
    assert again.attempts == stale.attempts == 1 and again.claims == 3
    before = _row(again.pk)
    assert services.job_complete(stale, result="stale result") is False
    assert services.job_fail(stale, error="RuntimeError: stale") == JobState.ACTIVE
    assert not services.job_renew_lease(stale.pk, stale.claims)
    assert _row(again.pk) == before and before["worker"] == "host-c:3"
    assert services.job_complete(again, result="ok")
    assert Job.objects.get(pk=again.pk).result == "ok"


# ---------------------------------------------------------------- 5, 6: the process tree


def _cluster_children(supervisor_pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(supervisor_pid).children()
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_cluster_that_dies_alone_is_restarted_and_runs_jobs(start_cluster):
    cluster = start_cluster(queues=["default"])
    [old] = _cluster_children(cluster.pid)
    # The cluster's whole process group (main, sentinel, workers), not the supervisor.
    os.killpg(old.pid, signal.SIGKILL)

    def replaced():
        new = [c for c in _cluster_children(cluster.pid) if c.pid != old.pid]
        return new and any(c["pid"] == new[0].pid and c["workers_alive"] >= 1 for c in live_clusters())

    wait_for(replaced, 40, 0.2, "the supervisor to start a new default cluster")
    assert cluster.proc.poll() is None
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"marker": "after-restart"})
    assert wait_finished(job_id).state == JobState.COMPLETED
    assert "default cluster (pid %d) exited" % old.pid in cluster.log()


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_supervisor_killed_outright_takes_its_clusters_with_it(start_cluster):
    cluster = start_cluster(queues=["default", "news"])
    tree = [p.pid for p in psutil.Process(cluster.pid).children(recursive=True)]
    assert len(tree) >= 2 * 3  # two clusters, each main + sentinel + workers
    os.kill(cluster.pid, signal.SIGKILL)
    cluster.proc.wait(10)
    try:
        wait_for(lambda: not any(_alive(pid) for pid in tree), 40, 0.2,
                 "every cluster process of the killed supervisor to stop")
    finally:
        for pid in tree:  # never leave an orphaned cluster behind, even when the test fails
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


# ---------------------------------------------------------------- 7: not before scheduled_at


@pytest.mark.django_db
def test_a_publishing_job_run_before_scheduled_at_publishes_nothing():
    at = timezone.now() + timedelta(hours=1)
    news = ScheduledNewsFactory(scheduled_at=at)
    job = Job.objects.get(subject=f"news:{news.pk}", job_type=NEWS_SCHEDULED_PUBLISHER, live_key__isnull=False)
    # An early wake-up (a person's "retry now", a clock-skewed host): run it at once.
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(state=JobState.PENDING, run_at=now, dispatched_at=now)
    assert run_job(job.pk) == "completed"
    job.refresh_from_db()
    assert job.result == f"news item is not due until {at.isoformat()}"
    row = News.objects.get(pk=news.pk)
    assert (row.status, row.published_at) == (NewsStatus.SCHEDULED, None)


# ---------------------------------------------------------------- the state machine, row by row
# (in-process, so that mutation testing, which cannot see into qcluster subprocesses, checks
# the rules the cluster tests rely on)


@pytest.mark.django_db(transaction=True)
def test_each_transition_writes_its_own_row_and_no_other(settings):
    settings.JOBS_LEASE_SECONDS = 20
    now = timezone.now()
    a, b = (Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.PENDING,
                               timeout=60, run_at=now, dispatched_at=now, max_retries=1) for _ in range(2))
    ja, jb = services.job_claim(a.pk, worker="w:1"), services.job_claim(b.pk, worker="w:2")
    row = Job.objects.get(pk=a.pk)
    assert (row.state, row.attempts, row.worker) == (JobState.ACTIVE, 1, "w:1")
    assert timedelta(seconds=19) < row.lease_expires_at - row.started_at <= timedelta(seconds=20)

    failed_at = timezone.now()
    assert services.job_fail(ja, error="RuntimeError: one") == JobState.RETRY and ja.state == JobState.RETRY
    row = Job.objects.get(pk=a.pk)
    assert (row.state, row.lease_expires_at, row.waiting_reason, row.finished_at) == (JobState.RETRY, None, "", None)
    assert row.run_at >= failed_at + timedelta(seconds=1)  # the backoff: not before 1 s
    assert row.last_error == "RuntimeError: one" and [e["attempt"] for e in row.errors] == [1]
    other = Job.objects.get(pk=b.pk)  # same attempt number, another job: untouched
    assert (other.state, other.worker, other.errors) == (JobState.ACTIVE, "w:2", [])

    Job.objects.filter(pk=a.pk).update(state=JobState.PENDING)
    ja = services.job_claim(a.pk, worker="w:1")
    assert services.job_fail(ja, error="RuntimeError: two") == JobState.DEAD  # attempt 2 = 1 + max_retries
    row = Job.objects.get(pk=a.pk)
    assert row.state == JobState.DEAD and row.finished_at is not None and row.live_key is None
    assert [e["attempt"] for e in row.errors] == [1, 2] and row.last_error == "RuntimeError: two"

    assert services.job_complete(jb, result=None)
    done = Job.objects.get(pk=b.pk)
    assert (done.state, done.result, done.lease_expires_at) == (JobState.COMPLETED, "", None)
    assert done.finished_at >= done.started_at
    assert services.job_complete(jb, result="again") is False  # once
    assert Job.objects.get(pk=b.pk).result == ""
