"""The periodic table through real `manage.py qcluster` processes: slots fire on time, once
per slot with two qclusters, once after downtime, and every periodic task does its work."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_q.models import Schedule

from jobs.models import Heartbeat, Job, JobState
from news.factories import NewsFactory, PublishedNewsFactory
from news.models import News, NewsStatus
from tests.conftest import slack, wait_dispatcher_pass, wait_for
from analytics.scheduling import NEWS_ANALYTICS
from jobs.periodic import sync_periodic_table
from jobs.system import SYSTEM_PERIODIC

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

# "Within a second" (measured 0.035-0.330 s), scaled by TEST_TIME_SLACK on a slow machine;
# the figures seen are printed (run with -s).
ON_TIME = timedelta(seconds=slack(1.0))


def slot_jobs(name: str, *, state: str | None = None) -> list[Job]:
    jobs = Job.objects.filter(job_type=SYSTEM_PERIODIC).order_by("pk")
    if state:
        jobs = jobs.filter(state=state)
    return [j for j in jobs if j.payload["name"] == name]


def slot_of(job: Job) -> datetime:
    return parse_datetime(job.payload["slot"])


def test_the_30_second_health_check_starts_within_a_second_of_each_slot(start_cluster):
    start_cluster(queues=["critical"], sync_schedules=True)
    ready_at = timezone.now()  # slots before this waited for workers still starting

    def two_slots_done():
        done = [j for j in slot_jobs("health_check", state=JobState.COMPLETED) if slot_of(j) > ready_at]
        return done if len(done) >= 2 else None

    jobs = wait_for(two_slots_done, 70, 0.2, "two health_check slots after the cluster was ready")[:2]

    slots = [slot_of(j) for j in jobs]
    assert slots[1] - slots[0] == timedelta(seconds=30)
    for job, slot in zip(jobs, slots):
        local = timezone.localtime(slot)
        assert local.second in (0, 30) and local.microsecond == 0
        fired_late, started_late = job.created_at - slot, job.started_at - slot
        print(f"health_check slot {local.time()}: job created +{fired_late.total_seconds():.3f} s, "
              f"started +{started_late.total_seconds():.3f} s, finished +{(job.finished_at - slot).total_seconds():.3f} s")
        assert timedelta(0) <= fired_late <= started_late < ON_TIME
        assert job.queue == "critical" and job.attempts == 1
    assert [slot_of(j) for j in slot_jobs("health_check")].count(slots[0]) == 1
    beat = Heartbeat.objects.get(name="health")
    assert beat.seen_at > slots[1] and beat.details["queues"]["critical"]["clusters"] == 1


def test_two_qclusters_fire_each_slot_exactly_once(start_cluster):
    # Both sync the periodic table as they start, at the same moment, on an empty table.
    clusters = [start_cluster(queues=["critical"], wait=False, sync_schedules=True) for _ in range(2)]
    for cluster in clusters:
        cluster.wait_ready(["critical"])
    assert Schedule.objects.count() == 5
    Schedule.objects.create(name="every-second", func="jobs.system.periodic_noop", schedule_type=Schedule.CRON,
                            cron="* * * * * *", cluster="critical", repeats=-1)
    time.sleep(6)
    Schedule.objects.filter(name="every-second").update(repeats=0)  # stop firing
    wait_dispatcher_pass(timezone.now())  # a pass that may have fired a last slot is over

    jobs = slot_jobs("every-second")
    slots = sorted(slot_of(j) for j in jobs)
    assert len(slots) >= 5
    assert len(set(slots)) == len(slots), "a slot fired twice"
    # A slot may be skipped if both dispatchers stall for over a second on a loaded machine
    # (missed slots are not replayed); the count says they did not stall much.
    skipped = (slots[-1] - slots[0]).total_seconds() + 1 - len(slots)
    assert skipped <= slack(1), f"{skipped:.0f} one-second slots skipped: {slots}"
    assert Heartbeat.objects.filter(kind="dispatcher").count() == 2  # both dispatchers were running
    every_slot = [(j.payload["schedule_id"], j.payload["slot"]) for j in Job.objects.filter(job_type=SYSTEM_PERIODIC)]
    assert len(every_slot) == len(set(every_slot))  # the table's own slots too
    wait_for(lambda: all(j.state == JobState.COMPLETED for j in Job.objects.filter(pk__in=[j.pk for j in jobs])),
             20, message="the slot jobs to complete")
    split = [len(re.findall(r"schedule 'every-second' slot", c.log())) for c in clusters]
    print(f"{len(slots)} one-second slots ({skipped:.0f} skipped), fired by the two dispatchers: {split}")
    assert sum(split) == len(slots)


def test_a_restart_after_downtime_runs_each_missed_slot_once(start_cluster):
    sync_periodic_table()
    now = timezone.now()
    Schedule.objects.update(next_run=now + timedelta(days=1))  # only the rows below are due
    archive = Schedule.objects.get(name="news_archive_sweep")  # hourly: 3 slots missed
    health = Schedule.objects.get(name="health_check")  # 30 s: 10 slots missed
    archive_missed = (now - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    health_missed = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    Schedule.objects.filter(pk=archive.pk).update(next_run=archive_missed)
    Schedule.objects.filter(pk=health.pk).update(next_run=health_missed)
    minutes = Schedule.objects.create(name="every-hour-by-minutes", func="jobs.system.periodic_noop",
                                      schedule_type=Schedule.MINUTES, minutes=60, repeats=-1, cluster="critical",
                                      next_run=now - timedelta(hours=5, minutes=10))

    restarted_at = timezone.now()
    start_cluster(queues=["critical", "news"])
    for name in ("news_archive_sweep", "health_check", "every-hour-by-minutes"):
        wait_for(lambda: slot_jobs(name, state=JobState.COMPLETED), 20, message=f"the missed {name} slot")
    wait_dispatcher_pass(timezone.now())  # any wrongly replayed slot would have fired by now

    # Slots before the restart: the missed ones. (A regular slot may follow while we wait.)
    assert [slot_of(j) for j in slot_jobs("news_archive_sweep") if slot_of(j) < restarted_at] == [archive_missed]
    assert [slot_of(j) for j in slot_jobs("health_check") if slot_of(j) < restarted_at] == [health_missed]
    assert [slot_of(j) for j in slot_jobs("every-hour-by-minutes")] == [minutes.next_run]
    for row in (archive, health, minutes):
        row.refresh_from_db()
        assert row.next_run > restarted_at
    assert timezone.localtime(archive.next_run).minute == 0
    assert archive.next_run - restarted_at <= timedelta(hours=1, seconds=30)
    assert minutes.next_run == now - timedelta(minutes=10) + timedelta(hours=1)  # its phase kept


def test_every_periodic_task_does_its_work_when_its_slot_comes(start_cluster):
    orphan = NewsFactory()  # scheduled by QuerySet.update(): no publishing job
    News.objects.filter(pk=orphan.pk).update(status=NewsStatus.SCHEDULED,
                                             scheduled_at=timezone.now() - timedelta(minutes=1))
    expired = PublishedNewsFactory()
    News.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    now = timezone.now()
    old_done, new_done = (
        Job.objects.create(job_type="system:noop", queue="default", payload={}, state=JobState.COMPLETED,
                           timeout=60, run_at=now - age, finished_at=now - age)
        for age in (timedelta(days=8), timedelta(days=6)))
    sync_periodic_table()
    Schedule.objects.update(next_run=timezone.now() + timedelta(days=1))  # nothing fires while starting
    start_cluster(queues=["critical", "news", "analytics", "default"])

    Schedule.objects.update(next_run=timezone.now())  # every slot due now

    names = ["news_publish_sweep", "news_archive_sweep", "analytics_batch", "health_check", "cleanup"]
    wait_for(lambda: all(slot_jobs(n, state=JobState.COMPLETED) for n in names), 30,
             message="each periodic task's first slot to complete")
    results = {n: slot_jobs(n, state=JobState.COMPLETED)[0].result for n in names}
    print(results)
    assert results["news_publish_sweep"] == "1 enqueued"
    assert results["news_archive_sweep"] == "1 archived"
    assert results["cleanup"].startswith("completed=1, dead=0, django_q_tasks=0")
    assert {j.queue for n in names for j in slot_jobs(n)} == {"critical", "news", "analytics", "default"}

    wait_for(lambda: News.objects.get(pk=orphan.pk).status == NewsStatus.PUBLISHED, 10,
             message="the orphaned item to be published")
    archived = News.objects.get(pk=expired.pk)
    assert archived.status == NewsStatus.ARCHIVED and archived.archived_at is not None
    assert Job.objects.filter(job_type=NEWS_ANALYTICS, payload__reason="periodic").exists()
    health = Heartbeat.objects.get(name="health").details
    assert health["database"] == "ok" and health["redis"] == "ok"
    assert results["health_check"] == "queue wechat: no live cluster"  # the one queue not started
    assert {q for q, d in health["queues"].items() if d["clusters"]} == {"critical", "news", "analytics", "default"}
    assert not Job.objects.filter(pk=old_done.pk).exists() and Job.objects.filter(pk=new_done.pk).exists()
