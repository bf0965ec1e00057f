"""SIGKILL mid-batch, for real: a batch process killed at the worst moments, and a real
qcluster worker killed while its batch holds read entries, then recovery with exact counts."""

import os
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest
from django.db import connections, transaction
from django.utils import timezone

from analytics.ingest import STREAM_KEY, record_events
from analytics.scheduling import NEWS_ANALYTICS
from analytics.models import AppliedBatch, ApplyLock, DailyStat, RawEvent
from analytics.services import GROUP, analytics_process_batch
from jobs.models import Job, JobState
from jobs.scheduler import enqueue
from news.factories import NewsFactory
from news.models import News
from nextevent.redis import get_redis
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("clear_of_local_midnight")]

# A batch process that SIGKILLs itself at a chosen point of its third chunk.
DOOMED_BATCH = """
import os, signal, django
django.setup()
from analytics import services
point = os.environ["KILL_AT"]
real = getattr(services, point)
calls = []
def doomed(*args, **kwargs):
    calls.append(1)
    if point == "_ack" and len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)   # committed, not acknowledged
    result = real(*args, **kwargs)
    if point == "_record_applied" and len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)   # every write done, not committed
    return result
setattr(services, point, doomed)
services.analytics_process_batch(reason="doomed", chunk_size=100)
"""


def workload(news_ids, n):
    events = [{"news_id": news_ids[i % len(news_ids)], "event_type": ("view", "share", "like", "view")[i % 4],
               "user_id": f"u{i % 17}"} for i in range(n)]
    record_events(events)
    return events


def assert_exact(events):
    day = timezone.localdate()
    expected = Counter((e["news_id"], day, e["event_type"]) for e in events)
    got = Counter({(n, d, t): c for n, d, t, c in DailyStat.objects.values_list("news_id", "day", "event_type", "count")})
    assert got == expected
    for news in News.objects.all():
        assert (news.view_count, news.share_count, news.like_count) == tuple(
            expected[(news.pk, day, t)] for t in ("view", "share", "like"))
    assert RawEvent.objects.count() == len(events)


def pending():
    from analytics.services import buffer_status

    return buffer_status()["pending"]


@pytest.mark.parametrize("kill_at,counted_before_kill", [("_record_applied", 200), ("_ack", 300)])
def test_a_batch_killed_mid_way_is_taken_over_and_counted_exactly_once(cluster_env, settings, kill_at,
                                                                      counted_before_kill):
    news_ids = [NewsFactory().pk for _ in range(3)]
    events = workload(news_ids, 550)
    proc = subprocess.run([sys.executable, "-c", DOOMED_BATCH], cwd=ROOT, env={**cluster_env, "KILL_AT": kill_at},
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert RawEvent.objects.count() == counted_before_kill  # chunks 1-2 (and 3 if committed)
    assert pending() == 100  # chunk 3 was read and never acknowledged

    settings.ANALYTICS_CLAIM_IDLE_SECONDS = 0.2
    wait_for(lambda: get_redis().xpending_range(STREAM_KEY, GROUP, "-", "+", 1)[0]["time_since_delivered"] > 250,
             5, message="the dead batch's entries to be idle")
    summary = analytics_process_batch(reason="recovery")
    assert "100 taken over" in summary
    assert ("100 already counted" in summary) == (kill_at == "_ack")
    assert_exact(events)
    assert pending() == 0 and get_redis().xlen(STREAM_KEY) == 0


@pytest.mark.cluster
def test_a_qcluster_worker_killed_mid_batch_is_replaced_and_the_job_recounts_exactly(start_cluster):
    cluster = start_cluster(queues=["analytics"], env={
        # The host sees the dead worker within 0.5 s and runs the job again at once: with no
        # idle time required, that re-run is the one that takes the dead worker's entries over.
        "ANALYTICS_CLAIM_IDLE_SECONDS": "0", "ANALYTICS_BATCH_CHUNK": "500",
        "JOBS_LEASE_SECONDS": "5", "JOBS_HEARTBEAT_SECONDS": "1"})
    news_ids = [NewsFactory().pk for _ in range(5)]
    events = workload(news_ids, 1200)
    ApplyLock.objects.create(name="apply")

    # Another connection holds the apply lock: the worker's batch reads a chunk, opens its
    # transaction and waits, mid-batch, where we kill it.
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        try:
            with transaction.atomic():
                ApplyLock.objects.select_for_update().get(name="apply")
                locked.set()
                release.wait(60)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        job_id = enqueue(NEWS_ANALYTICS, {"reason": "doomed"})
        wait_for(lambda: pending() == 500, 30, message="the worker to read its first chunk")
        job = Job.objects.get(pk=job_id)
        assert job.state == JobState.ACTIVE
        victim = int(job.worker.rsplit(":", 1)[1])
        assert victim in cluster.worker_pids()
        os.kill(victim, signal.SIGKILL)
    finally:
        release.set()
        holder.join(10)
    assert not AppliedBatch.objects.exists()

    # The lease runs out, the dispatcher runs the job again on the replacement worker, and
    # that run takes over the dead one's 500 entries.
    wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.COMPLETED).exists(), 60,
             message="the job to be run again and complete")
    job = Job.objects.get(pk=job_id)
    assert job.attempts == 2 and int(job.worker.rsplit(":", 1)[1]) != victim
    assert "500 taken over" in job.result and "1200 counted" in job.result
    assert_exact(events)
    assert pending() == 0 and get_redis().xlen(STREAM_KEY) == 0
