"""A loop stuck where no timeout reaches is noticed and replaced, without losing or doubling
a job: here the dispatcher waits on a row lock longer than the watchdog's bound."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import timedelta

import MySQLdb
import pytest
from django.utils import timezone

from jobs.models import Heartbeat, Job, JobState
from jobs.system import SYSTEM_NOOP
from tests.ops_support import other_mysql_session
from tests.conftest import ROOT, slack, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def lock_row(table: str, name: str) -> MySQLdb.connections.Connection:
    """Another session holding the row's lock, as a long transaction elsewhere would."""
    other = other_mysql_session()
    cursor = other.cursor()
    cursor.execute("BEGIN")
    cursor.execute(f"SELECT id FROM {table} WHERE name = %s FOR UPDATE", [name])
    assert cursor.fetchone(), f"no {table} row {name!r} to lock"
    return other


def test_a_dispatcher_stuck_in_a_lock_wait_is_replaced_and_jobs_still_come_due(start_cluster, cluster_env):
    # Timeouts longer than the watchdog's bound, so that the watchdog, not a timeout, ends it.
    cluster = start_cluster(queues=["default"], env={"JOBS_LEASE_SECONDS": "60", "JOBS_DB_TIMEOUT": "55",
                                                     "JOBS_LOOP_STUCK_AFTER": "3"})
    name = f"dispatcher:{socket.gethostname()}:{cluster.pid}"
    wait_for(lambda: Heartbeat.objects.filter(name=name).exists(), slack(20), 0.2, "the dispatcher's heartbeat")
    holder = lock_row(Heartbeat._meta.db_table, name)
    try:
        # Its next heartbeat (every 5 s) waits on the lock: the watchdog replaces it 3 s later.
        wait_for(lambda: "is stuck" in cluster.log(), slack(20), 0.2, "the watchdog to see the stuck dispatcher")
        due = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.SCHEDULED,
                                 timeout=60, run_at=timezone.now() + timedelta(seconds=1))
        # Only a dispatcher moves a scheduled job to pending: the replacement does it, lock or not.
        wait_for(lambda: Job.objects.filter(pk=due.pk, state=JobState.COMPLETED).exists(), slack(20), 0.2,
                 "a job to come due under the replacement dispatcher")
        stats = subprocess.run([sys.executable, "manage.py", "jobs", "stats", "--json"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, env=cluster_env)
        assert json.loads(stats.stdout)["loop_restarts"]["dispatcher"] == 1, stats.stdout[-2000:]
        from jobs.monitoring.metrics import render

        body, _ = render(None)
        assert b'nextevent_loop_restarts_recent{loop="dispatcher"} 1.0' in body
    finally:
        holder.rollback()
        holder.close()
    # The stuck one gets its lock, finishes its pass and ends; the job ran once.
    wait_for(lambda: "came back after it was replaced: ending" in cluster.log(), slack(20), 0.2,
             "the replaced dispatcher to end")
    due.refresh_from_db()
    assert (due.state, due.attempts) == (JobState.COMPLETED, 1)
    assert cluster.proc.poll() is None


def test_a_supervisor_whose_main_loop_is_stuck_restarts_itself_and_runs_on(start_cluster):
    """The supervisor's own loop waits on a table lock (an ALTER elsewhere holds the ledger)
    while re-pushing after a cluster died. Nothing would watch the clusters; the watchdog
    kills them and re-executes the supervisor, which runs on once the lock is gone."""
    import psutil

    cluster = start_cluster(queues=["default"], env={"JOBS_LEASE_SECONDS": "60", "JOBS_DB_TIMEOUT": "55",
                                                     "JOBS_LOOP_STUCK_AFTER": "3"})
    first_main = psutil.Process(cluster.pid).children()[0].pid
    other = other_mysql_session()
    try:
        other.cursor().execute(f"LOCK TABLES {Job._meta.db_table} WRITE")
        psutil.Process(first_main).kill()  # the main loop's re-push after this death waits on the lock
        wait_for(lambda: "main loop is stuck" in cluster.log(), slack(30), 0.2, "the watchdog to see the stuck loop")
    finally:
        other.cursor().execute("UNLOCK TABLES")
        other.close()
    # The same process (pid), a new program image: it starts its clusters again and runs jobs.
    wait_for(lambda: cluster.log().count(f"qcluster supervisor {cluster.pid} running") == 2, slack(30), 0.2,
             "the supervisor to start again")
    assert cluster.proc.poll() is None
    cluster.wait_ready(["default"])
    job = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.SCHEDULED,
                             timeout=60, run_at=timezone.now())
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.COMPLETED).exists(), slack(30), 0.2,
             "a job to run under the restarted supervisor")
    assert not psutil.pid_exists(first_main) or psutil.Process(first_main).status() == psutil.STATUS_ZOMBIE
