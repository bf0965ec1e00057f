"""The per-minute roll-up of finished jobs (jobs/monitoring/rollup.py): what the dashboard,
`jobs stats` and /metrics read instead of the ledger. Its numbers must equal an exact count
over the ledger, count a job once whichever side of the mark it finished on, and catch up
after passes were missed."""

from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from jobs import monitoring
from jobs.health import health_check
from jobs.models import Heartbeat, Job, JobStat, JobStatMark, JobState
from jobs.monitoring import metrics as monitoring_metrics
from jobs.monitoring import rollup
from tests.ops_support import make_job

pytestmark = pytest.mark.django_db


def exact(since, now):
    """The ledger's own count, by (queue, job_type, state): what the roll-up must equal."""
    rows = (Job.objects.filter(state__in=rollup.FINISHED_COUNTED, finished_at__gte=since, finished_at__lte=now)
            .values("queue", "job_type", "state").order_by().annotate(n=Count("pk")))
    return {(r["queue"], r["job_type"], r["state"]): r["n"] for r in rows}


def counts(totals):
    return {key: t.count for key, t in totals.items() if t.count}


def finished_at(at, **fields):
    """A completed job that finished at exactly `at` (make_job's `ago` counts from its own now)."""
    return make_job(state=JobState.COMPLETED, finished_at=at, started_at=at - timedelta(seconds=1),
                    run_at=at - timedelta(seconds=1.5), **fields)


def small_ledger(now):
    """Jobs over the last 30 hours in two queues and types, both final states, some on
    minute boundaries, plus rows the roll-up must leave out (cancelled, live)."""
    kinds = [("news", "news:expiration"), ("default", "system:noop")]
    for i in range(120):
        queue, job_type = kinds[i % 2]
        state = JobState.DEAD if i % 7 == 0 else JobState.COMPLETED
        ago = 5 + i * 900 + (i % 5) * 13.37  # every 15 minutes or so, over 30 hours
        make_job(state=state, queue=queue, job_type=job_type, ago=ago, duration=(i % 9) * 0.3, lateness=(i % 4) * 0.2)
    boundary = rollup.floor_minute(now - timedelta(minutes=20))
    for at in (boundary - timedelta(microseconds=1), boundary, boundary + timedelta(microseconds=1)):
        finished_at(at)
    make_job(state=JobState.CANCELLED, ago=100)
    make_job(state=JobState.PENDING, ago=100)
    make_job(state=JobState.SCHEDULED, ago=100)


def test_rolled_up_counts_equal_an_exact_count_of_the_ledger():
    now = timezone.now()
    small_ledger(now)
    day = now - timedelta(hours=24)
    before = (counts(rollup.totals(day, now)), monitoring.finished_counts(now), monitoring.throughput(now))

    result = rollup.roll_up(now)
    assert result["minutes"] > 0 and JobStat.objects.exists()
    assert rollup.mark_through() == rollup.floor_minute(now - rollup.GRACE)

    assert counts(rollup.totals(day, now)) == exact(day, now) == before[0]
    assert monitoring.finished_counts(now) == before[1]
    assert monitoring.throughput(now) == before[2]
    hour = now - timedelta(hours=1)
    assert counts(rollup.totals(hour, now)) == exact(hour, now)


def test_after_the_roll_up_the_views_read_it_not_the_ledger():
    now = timezone.now()
    small_ledger(now)
    history = monitoring.throughput(now)
    rollup.roll_up(now)
    # The ledger rows of the rolled minutes gone (as cleanup would): the numbers stay.
    Job.objects.filter(finished_at__lt=rollup.mark_through()).delete()
    assert monitoring.throughput(now) == history


def test_a_job_finished_either_side_of_a_minute_boundary_is_counted_once():
    now = timezone.now()
    mark = rollup.floor_minute(now - rollup.GRACE)  # where this pass stops
    for at in (mark - timedelta(microseconds=1), mark, mark + timedelta(seconds=1)):
        finished_at(at)
    since = now - timedelta(minutes=30)

    rollup.roll_up(now)
    assert rollup.mark_through() == mark
    assert sum(s.count for s in JobStat.objects.all()) == 1  # only the minute before the mark
    assert counts(rollup.totals(since, now)) == {("default", "system:noop", "completed"): 3}

    later = now + timedelta(minutes=2)  # the next pass rolls the mark's minute too
    rollup.roll_up(later)
    assert rollup.mark_through() > mark + timedelta(seconds=1)
    assert sum(s.count for s in JobStat.objects.all()) == 3
    assert counts(rollup.totals(since, later)) == {("default", "system:noop", "completed"): 3}


def test_a_late_pass_catches_up_chunk_by_chunk_and_counts_every_job_once():
    now = timezone.now()
    small_ledger(now)
    rollup.roll_up(now - timedelta(hours=6))  # the last pass before six hours of downtime
    stale = rollup.mark_through()

    one = rollup.roll_up(now, budget_s=0)  # a pass is bounded: one chunk when out of time
    # (it may skip to the next finished job's minute first: they are 15 minutes apart here)
    assert one["chunks"] == 1 and stale + rollup.CHUNK <= rollup.mark_through() <= stale + rollup.CHUNK + timedelta(
        minutes=15)

    passes, _ = rollup.catch_up(now)
    assert passes >= 2 and rollup.mark_through() == rollup.floor_minute(now - rollup.GRACE)
    day = now - timedelta(hours=24)
    assert counts(rollup.totals(day, now)) == exact(day, now)
    # Every finished job is in exactly one JobStat row.
    assert sum(s.count for s in JobStat.objects.all()) == Job.objects.filter(
        state__in=rollup.FINISHED_COUNTED, finished_at__lt=rollup.mark_through()).count()


def test_metrics_histograms_from_the_roll_up_equal_the_ledgers():
    now = timezone.now()
    for i, (duration, lateness) in enumerate(((0.03, 0.01), (0.3, 0.5), (3, 20), (45, 0.2), (700, 1000))):
        make_job(state=JobState.COMPLETED if i % 2 else JobState.DEAD, ago=300 + i * 400, duration=duration,
                 lateness=lateness)
    make_job(state=JobState.DEAD, ago=600, started_at=None)  # never started: no duration
    from_ledger = monitoring_metrics.window_stats(now)
    rollup.roll_up(now)
    assert JobStat.objects.filter(minute__lt=now - timedelta(minutes=5)).exists()
    from_rollup = monitoring_metrics.window_stats(now)
    assert from_rollup.keys() == from_ledger.keys()
    for key, stat in from_rollup.items():
        expected = from_ledger[key]
        assert (stat.count, stat.timed, stat.duration_buckets, stat.lateness_buckets) == (
            expected.count, expected.timed, expected.duration_buckets, expected.lateness_buckets)
        assert stat.duration_sum == pytest.approx(expected.duration_sum)
        assert stat.lateness_sum == pytest.approx(expected.lateness_sum)


def test_the_roll_up_keeps_only_the_history_the_views_show():
    now = timezone.now()
    old = JobStat.objects.create(minute=rollup.floor_minute(now - rollup.HISTORY - timedelta(hours=1)),
                                 queue="default", job_type="system:noop", state="completed", count=5)
    JobStatMark.objects.create(name=rollup.MARK, through=now - timedelta(days=30))
    result = rollup.roll_up(now)
    assert result["pruned"] == 1 and not JobStat.objects.filter(pk=old.pk).exists()
    # A mark older than the history starts again at the history's start, not 30 days back.
    assert result["minutes"] <= rollup.HISTORY / rollup.MINUTE


def test_the_health_check_runs_the_roll_up(settings):
    make_job(state=JobState.COMPLETED, ago=600)
    health_check()
    details = Heartbeat.objects.get(name="health").details
    assert details["rollup"]["minutes"] > 0
    assert rollup.mark_through() is not None and JobStat.objects.filter(count=1).exists()
