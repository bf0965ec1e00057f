"""The numbers behind `jobs stats`, the dashboard and /metrics, checked against the ledger
rows that produce them: hour and day buckets, today/last-hour windows, lateness percentiles."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import monitoring
from jobs.models import JobState
from tests.ops_support import make_job

pytestmark = pytest.mark.django_db


def test_throughput_puts_each_finished_job_in_its_hour_and_local_day():
    latest = make_job(state=JobState.COMPLETED, ago=5)
    earlier = make_job(state=JobState.COMPLETED, ago=3605)
    make_job(state=JobState.DEAD, ago=3605, finished_at=earlier.finished_at)
    yesterday = make_job(state=JobState.COMPLETED, ago=26 * 3600)
    make_job(state=JobState.COMPLETED, ago=8 * 86400)  # older than both charts
    make_job(state=JobState.CANCELLED, ago=5)  # not processed
    make_job(state=JobState.PENDING, ago=5)
    now = timezone.now()

    history = monitoring.throughput(now)
    hourly, daily = history["hourly"], history["daily"]
    assert len(hourly) == 24 and len(daily) == 7
    assert hourly[-1].start <= now < hourly[-1].end
    assert all(a.end == b.start for a, b in zip(hourly, hourly[1:]))

    def bucket(buckets, at):
        return next(b for b in buckets if b.start <= at < b.end)

    assert (bucket(hourly, latest.finished_at).completed, bucket(hourly, latest.finished_at).failed) == (1, 0)
    assert (bucket(hourly, earlier.finished_at).completed, bucket(hourly, earlier.finished_at).failed) == (1, 1)
    assert sum(b.completed for b in hourly) == 2 and sum(b.failed for b in hourly) == 1

    assert daily[-1].start == monitoring.local_day_start(now)
    assert daily[0].start == monitoring.local_day_start(now) - timedelta(days=6)
    assert all(a.end == b.start for a, b in zip(daily, daily[1:]))
    assert sum(b.processed for b in daily) == 4  # not the week-old one, nor the cancelled one
    assert bucket(daily, yesterday.finished_at).completed >= 1


def test_finished_counts_split_the_last_hour_from_today_by_queue():
    now = timezone.now()
    make_job(state=JobState.COMPLETED, queue="news", job_type="news:expiration", ago=60)
    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", ago=60)
    since_midnight = (now - monitoring.local_day_start(now)).total_seconds()
    if since_midnight > 7200:  # a job from earlier today, but over an hour ago
        make_job(state=JobState.COMPLETED, queue="news", job_type="news:expiration", ago=5400)
    counts = monitoring.finished_counts(now)
    assert counts["news"]["completed_1h"] == 1 and counts["news"]["failed_1h"] == 1
    assert counts["news"]["completed_today"] == (2 if since_midnight > 7200 else 1)
    assert counts["default"] == {"completed_1h": 0, "failed_1h": 0, "completed_today": 0, "failed_today": 0,
                                 "expired_1h": 0, "expired_today": 0}


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert monitoring.percentile(values, 50) == 50
    assert monitoring.percentile(values, 99) == 99
    assert monitoring.percentile(values, 100) == 100
    assert monitoring.percentile([3.0], 90) == 3.0
    assert monitoring.percentile([], 50) is None


def test_timing_percentiles_measure_lateness_and_duration_per_queue():
    for lateness in (0.1, 0.2, 0.3, 0.4, 5.0):
        make_job(state=JobState.COMPLETED, queue="news", job_type="news:expiration", lateness=lateness, duration=2)
    make_job(state=JobState.DEAD, queue="wechat", job_type="wechat:publishing", lateness=1, duration=30)
    make_job(state=JobState.COMPLETED, queue="news", job_type="news:expiration", lateness=99, ago=2 * 86400)

    timings = monitoring.timing_percentiles()
    news = timings["news"]
    assert news["lateness"]["count"] == 5
    assert news["lateness"]["p50"] == pytest.approx(0.3, abs=1e-3)
    assert news["lateness"]["max"] == pytest.approx(5.0, abs=1e-3)
    assert news["duration"]["p90"] == pytest.approx(2.0, abs=1e-3)
    assert timings["wechat"]["duration"]["max"] == pytest.approx(30, abs=1e-3)
    assert timings["all"]["lateness"]["count"] == 6
    assert timings["default"]["lateness"] == {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}


def test_timing_percentiles_sample_the_most_recent_jobs_of_both_states():
    # Completed jobs fill the sample; dead jobs newer than its oldest one belong in it, older ones not.
    for ago, lateness in ((10, 0.1), (20, 0.2), (30, 0.3), (40, 0.4)):
        make_job(state=JobState.COMPLETED, ago=ago, lateness=lateness)
    make_job(state=JobState.DEAD, ago=15, lateness=7.0)  # among the 3 most recent
    make_job(state=JobState.DEAD, ago=35, lateness=9.0)  # older than all of the sample
    timings = monitoring.timing_percentiles(sample=3)["all"]["lateness"]
    assert timings["count"] == 3
    assert timings["max"] == pytest.approx(7.0, abs=1e-3) and timings["p50"] == pytest.approx(0.2, abs=1e-3)
