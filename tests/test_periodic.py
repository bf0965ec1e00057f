"""The periodic table: its django-q2 Schedule rows, the dispatcher firing them (one ledger
job per slot), and each periodic task doing its work. In-process on the real MariaDB and
Redis; tests/test_periodic_cluster.py does the same through real qcluster processes."""

from __future__ import annotations

import io
import logging
import uuid
from datetime import datetime, timedelta

import pytest
from croniter import croniter
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule, Task

from jobs import broker
from jobs.dispatcher import fire_schedules
from jobs.liveness import publish_cluster_heartbeat
from jobs.models import Heartbeat, Job, JobState
from jobs.worker import run_job
from tests.conftest import run_concurrently
from analytics.jobs import analytics_enqueue_batch
from analytics.scheduling import NEWS_ANALYTICS
from jobs.health import health_check
from jobs.maintenance import cleanup, delete_in_batches
from jobs.periodic import first_slot, sync_periodic_table
from jobs.queues import QUEUES
from jobs.registry import periodic_table
from jobs.system import SYSTEM_PERIODIC

EXPECTED_TABLE = {
    # name: (cron, queue, func)
    "news_publish_sweep": ("* * * * *", "news", "news.jobs.news_publish_sweep"),
    "news_archive_sweep": ("0 * * * *", "news", "news.jobs.news_archive_sweep"),
    "analytics_batch": ("*/5 * * * *", "analytics", "analytics.jobs.analytics_enqueue_batch"),
    "health_check": ("* * * * * */30", "critical", "jobs.health.health_check"),
    "cleanup": ("0 2 * * *", "default", "jobs.maintenance.cleanup"),
}


def schedule(name, *, cron="0 * * * *", next_run=None, func="jobs.health.health_check", cluster="critical",
             **fields) -> Schedule:
    fields.setdefault("schedule_type", Schedule.CRON)
    repeats = fields.pop("repeats", -1)
    # Created as a valid hourly row, then changed as an edit in the admin would (django-q2's
    # save() computes next_run of a new cron row itself).
    row = Schedule.objects.create(name=name, func="jobs.health.health_check", schedule_type=Schedule.CRON,
                                  cron="0 * * * *", repeats=repeats)
    Schedule.objects.filter(pk=row.pk).update(func=func, cron=cron, cluster=cluster,
                                              next_run=next_run or timezone.now(), **fields)
    row.refresh_from_db()
    return row


def fired(s: Schedule) -> list[Job]:
    return [j for j in Job.objects.filter(job_type=SYSTEM_PERIODIC).order_by("pk")
            if j.payload["schedule_id"] == s.pk]


def slot_floor(now: datetime, seconds: int = 30) -> datetime:
    return now.replace(second=now.second - now.second % seconds, microsecond=0)


# ---------------------------------------------------------------- the table's rows


@pytest.mark.django_db
def test_sync_creates_the_periodic_table_once_with_its_timings_and_queues():
    now = timezone.now()
    changes = sync_periodic_table()

    rows = {s.name: s for s in Schedule.objects.all()}
    assert {n: (r.cron, r.cluster, r.func) for n, r in rows.items()} == EXPECTED_TABLE
    assert {e.name for e in periodic_table()} == set(EXPECTED_TABLE) and len(changes) == 5
    for row in rows.values():
        assert row.schedule_type == Schedule.CRON and row.repeats == -1
        assert now < row.next_run
        assert croniter.match(row.cron, timezone.localtime(row.next_run)), row.name
    assert rows["health_check"].next_run - now <= timedelta(seconds=30)
    assert timezone.localtime(rows["health_check"].next_run).second in (0, 30)
    cleanup_at = timezone.localtime(rows["cleanup"].next_run)  # in TIME_ZONE (Asia/Shanghai)
    assert (cleanup_at.hour, cleanup_at.minute) == (2, 0) and str(cleanup_at.tzinfo) == "Asia/Shanghai"

    assert sync_periodic_table() == []
    assert Schedule.objects.count() == 5


@pytest.mark.django_db
def test_sync_keeps_an_admins_timing_but_puts_back_func_and_queue_and_removes_duplicates():
    sync_periodic_table()
    row = Schedule.objects.get(name="news_archive_sweep")
    admin_next = timezone.now() + timedelta(hours=5)
    Schedule.objects.filter(pk=row.pk).update(cron="30 */2 * * *", next_run=admin_next,
                                              func="somewhere.else", cluster="default")
    schedule("health_check", cron="* * * * *")  # a second row by the same name

    changes = sync_periodic_table()

    row.refresh_from_db()
    assert (row.cron, row.next_run) == ("30 */2 * * *", admin_next)  # the admin's timing survives
    assert (row.func, row.cluster) == ("news.jobs.news_archive_sweep", "news")
    assert Schedule.objects.filter(name="health_check").count() == 1
    assert Schedule.objects.get(name="health_check").cron == "* * * * * */30"
    assert "news_archive_sweep: updated cluster, func" in changes
    assert any("removed duplicate" in c for c in changes)


@pytest.mark.django_db
def test_sync_with_reset_puts_the_codes_timing_back():
    sync_periodic_table()
    Schedule.objects.filter(name="cleanup").update(cron="0 4 * * *", next_run=timezone.now() + timedelta(days=9))

    out = io.StringIO()
    call_command("sync_periodic", "--reset", stdout=out)

    row = Schedule.objects.get(name="cleanup")
    assert row.cron == "0 2 * * *" and row.next_run == first_slot("0 2 * * *")
    assert "cleanup: updated cron, next_run" in out.getvalue()

    out = io.StringIO()
    call_command("sync_periodic", stdout=out)  # without --reset: nothing to do
    assert "already in step" in out.getvalue() and "health_check" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_qclusters_starting_together_sync_the_table_once():
    _, errors = run_concurrently(sync_periodic_table, 4)

    assert errors == []
    assert sorted(Schedule.objects.values_list("name", flat=True)) == sorted(EXPECTED_TABLE)


# ---------------------------------------------------------------- firing slots


@pytest.mark.django_db
def test_a_due_slot_becomes_one_ledger_job_on_the_schedules_queue_and_next_run_advances():
    now = timezone.now()
    slot = slot_floor(now)
    s = schedule("every-30s", cron="* * * * * */30", next_run=slot, func="jobs.health.health_check",
                 cluster="critical", kwargs="{}")

    assert fire_schedules(now=now) == 1
    assert fire_schedules(now=now) == 0

    [job] = fired(s)
    assert job.queue == "critical" and job.state == JobState.PENDING
    assert job.payload == {"schedule_id": s.pk, "name": "every-30s", "func": "jobs.health.health_check",
                           "slot": slot.isoformat(), "args": "", "kwargs": "{}"}
    assert job.unique_key == f"schedule:{s.pk}:{int(slot.timestamp())}"
    s.refresh_from_db()
    assert s.next_run == slot + timedelta(seconds=30) and s.task == f"job:{job.pk}"


@pytest.mark.django_db
def test_missed_slots_fire_once_and_the_schedule_continues_from_now():
    now = timezone.now()
    cron_row = schedule("every-30s", cron="* * * * * */30", next_run=slot_floor(now) - timedelta(minutes=5))
    minutes_row = schedule("every-15-min", schedule_type=Schedule.MINUTES, minutes=15, cron=None,
                           next_run=now - timedelta(minutes=50))
    missed_at = {cron_row.pk: cron_row.next_run, minutes_row.pk: minutes_row.next_run}

    assert fire_schedules(now=now) == 2
    assert fire_schedules(now=now) == 0

    for row in (cron_row, minutes_row):
        [job] = fired(row)
        assert job.payload["slot"] == missed_at[row.pk].isoformat()
        row.refresh_from_db()
        assert row.next_run > now
    assert cron_row.next_run - now <= timedelta(seconds=30)
    # A Minutes schedule keeps its phase: 50 minutes ago + 4 x 15 minutes.
    assert minutes_row.next_run == missed_at[minutes_row.pk] + timedelta(minutes=60)


@pytest.mark.django_db
def test_a_once_schedule_fires_once_and_a_counted_one_stops_at_zero():
    once = schedule("once", schedule_type=Schedule.ONCE, cron=None, next_run=timezone.now())
    twice = schedule("twice", schedule_type=Schedule.MINUTES, minutes=1, cron=None, repeats=2,
                     next_run=timezone.now() - timedelta(seconds=1))

    fire_schedules()
    assert not Schedule.objects.filter(pk=once.pk).exists() and len(fired(once)) == 1
    twice.refresh_from_db()
    assert twice.repeats == 1 and len(fired(twice)) == 1


@pytest.mark.django_db
def test_a_broken_schedule_neither_refires_the_others_nor_stops_its_own_next_run(caplog):
    now = timezone.now()
    good_first = schedule("good-first", next_run=now - timedelta(seconds=9))
    broken = [
        schedule("bad-args", args="(1,", next_run=now - timedelta(seconds=7)),
        schedule("bad-kwargs", kwargs="[1, 2]", next_run=now - timedelta(seconds=6)),
        # The admin accepts an empty cron (the validator skips blank values).
        schedule("empty-cron", cron="", next_run=now - timedelta(seconds=5)),
        schedule("bad-type", schedule_type="ZZ", cron=None, next_run=now - timedelta(seconds=4)),
    ]
    good_last = schedule("good-last", next_run=now - timedelta(seconds=1))

    with caplog.at_level(logging.ERROR, logger="jobs.dispatcher"):
        for _ in range(3):  # django-q2's bug re-fired the good ones on every pass
            fire_schedules()

    assert len(fired(good_first)) == 1 and len(fired(good_last)) == 1
    for row in broken:
        assert fired(row) == [], row.name
        row.refresh_from_db()
        assert row.next_run > now, f"{row.name} did not advance"
        assert f"schedule {row.name!r} (id {row.pk}) could not fire" in caplog.text
    for row in (good_first, good_last):
        row.refresh_from_db()
        assert row.next_run > now


@pytest.mark.django_db
@pytest.mark.parametrize("func", ["os.system", "news.jobs.no_such_function", "news.services.news_publish"])
def test_a_schedule_naming_anything_but_a_declared_periodic_task_goes_dead_and_runs_nothing(func, tmp_path, caplog):
    # An admin who can edit Schedule rows must not be able to run arbitrary code.
    marker = tmp_path / "ran"
    row = schedule("rogue", func=func, args=repr(f"touch {marker}"), next_run=timezone.now() - timedelta(seconds=1))

    with caplog.at_level(logging.ERROR):
        assert fire_schedules() == 1
        (job,) = fired(row)
        assert run_job(job.pk) == "dead"

    job.refresh_from_db()
    assert job.state == JobState.DEAD and "is not a declared periodic task" in job.last_error
    assert not marker.exists()
    assert f"schedule 'rogue' names {func!r}, which is not a declared periodic task" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatchers_fire_a_slot_once():
    s = schedule("contested", next_run=timezone.now() - timedelta(seconds=1))
    counts, errors = run_concurrently(fire_schedules, 6)

    assert errors == [] and sum(counts) == 1 and len(fired(s)) == 1


# ---------------------------------------------------------------- the periodic tasks


@pytest.mark.django_db
def test_the_analytics_task_enqueues_one_analytics_batch_job():
    first = analytics_enqueue_batch()
    second = analytics_enqueue_batch()  # the first is still waiting: no second live job

    [job] = Job.objects.filter(job_type=NEWS_ANALYTICS)
    assert first == second == f"job {job.pk}"
    assert job.queue == "analytics" and job.payload == {"reason": "periodic"}
    assert job.state == JobState.PENDING and job.live_key == "news:analytics:periodic"


@pytest.mark.django_db
def test_the_health_check_records_every_queue_in_the_health_heartbeat(caplog):
    now = timezone.now()
    old = Job.objects.create(job_type="system:noop", queue="news", payload={}, state=JobState.PENDING, timeout=60,
                             run_at=now - timedelta(minutes=10), dispatched_at=now - timedelta(minutes=10))
    broker.push([(old.pk, "news", 60)])
    Job.objects.create(job_type="system:noop", queue="wechat", payload={}, state=JobState.DEAD, timeout=60,
                       run_at=now, finished_at=now)
    publish_cluster_heartbeat("critical")  # as the critical cluster does every second

    with caplog.at_level(logging.WARNING, logger="jobs.health"):
        result = health_check()

    beat = Heartbeat.objects.get(name="health")
    details = beat.details
    assert beat.kind == "health" and now <= beat.seen_at <= timezone.now()
    assert details["database"] == "ok" and details["redis"] == "ok" and details["ok"] is False
    assert set(details["queues"]) == set(QUEUES)
    for q in details["queues"].values():
        assert set(q) == {"scheduled", "pending", "active", "retry", "dead", "depth", "oldest_pending_age_s",
                          "clusters", "workers_alive"}
    news, wechat, critical = (details["queues"][q] for q in ("news", "wechat", "critical"))
    assert news["pending"] == 1 and news["depth"] == 1 and 599 <= news["oldest_pending_age_s"] <= 610
    assert wechat["dead"] == 1 and critical["clusters"] == 1
    assert "queue news: oldest pending job is 600 s old" in details["problems"]
    assert "queue wechat: 1 dead job(s)" in details["problems"]
    assert "queue news: no live cluster" in details["problems"]
    assert "queue critical: no live cluster" not in details["problems"]
    assert "health check: queue wechat: 1 dead job(s)" in caplog.text
    assert result == "; ".join(details["problems"])


@pytest.mark.django_db
def test_the_health_check_reports_redis_down(settings):
    # The project's own Redis settings (timeouts and retries included), pointed at a closed port.
    settings.REDIS = {**settings.REDIS, "port": 1}
    result = health_check()

    details = Heartbeat.objects.get(name="health").details
    assert details["ok"] is False and details["database"] == "ok"
    assert details["redis"].startswith("error:") and result.startswith("redis:")


def _finished_job(state: str, days_ago: float, queue="default") -> Job:
    now = timezone.now()
    return Job.objects.create(job_type="system:noop", queue=queue, payload={}, state=state, timeout=60,
                              run_at=now - timedelta(days=days_ago), finished_at=now - timedelta(days=days_ago))


def _task(days_ago: float) -> Task:
    at = timezone.now() - timedelta(days=days_ago)
    return Task.objects.create(id=uuid.uuid4().hex, name="t", func="jobs.worker.run_job", started=at, stopped=at,
                               success=False)


@pytest.mark.django_db
def test_cleanup_deletes_what_is_past_retention_and_keeps_the_rest(settings):
    settings.JOBS_RETENTION_COMPLETED_DAYS = 7
    settings.JOBS_RETENTION_DEAD_DAYS = 30
    gone = [_finished_job(JobState.COMPLETED, 7.01), _finished_job(JobState.COMPLETED, 40),
            _finished_job(JobState.CANCELLED, 8), _finished_job(JobState.DEAD, 30.01)]
    kept = [_finished_job(JobState.COMPLETED, 6.99), _finished_job(JobState.CANCELLED, 1),
            _finished_job(JobState.DEAD, 29.99), _finished_job(JobState.DEAD, 8)]
    now = timezone.now()
    live = Job.objects.create(job_type="system:noop", queue="default", payload={}, state=JobState.SCHEDULED,
                              timeout=60, run_at=now - timedelta(days=90))
    old_task, new_task = _task(31), _task(2)

    result = cleanup()

    left = set(Job.objects.values_list("pk", flat=True))
    assert left == {j.pk for j in kept} | {live.pk}
    assert list(Task.objects.values_list("id", flat=True)) == [new_task.id]
    assert result.startswith("completed=3, dead=1, django_q_tasks=1")
    assert old_task.id not in result


@pytest.mark.django_db
def test_cleanup_follows_the_retention_settings(settings):
    settings.JOBS_RETENTION_COMPLETED_DAYS = 2
    settings.JOBS_RETENTION_DEAD_DAYS = 5
    a, b = _finished_job(JobState.COMPLETED, 3), _finished_job(JobState.COMPLETED, 1)
    c, d = _finished_job(JobState.DEAD, 6), _finished_job(JobState.DEAD, 4)

    cleanup()

    assert set(Job.objects.values_list("pk", flat=True)) == {b.pk, d.pk}


@pytest.mark.django_db
def test_delete_in_batches_is_bounded_per_run():
    for _ in range(5):
        _finished_job(JobState.COMPLETED, 10)
    old = Job.objects.filter(state=JobState.COMPLETED)

    assert delete_in_batches(old, batch=2, max_batches=2) == 4
    assert old.count() == 1
    assert delete_in_batches(old, batch=2, max_batches=2) == 1
