"""The engine's dispatcher: the loop that gives django-q2 what it lacks on Redis.

Each pass, bounded in rows and time:
- next_due_times: one cheap statement (index look-ups, no lock, no transaction) reading the
  earliest run_at of a scheduled or retry job and the earliest next_run of a schedule; the
  passes below open their locking transactions only when that says something is due, and
  the loop sleeps until the earliest known time, at most JOBS_DISPATCH_INTERVAL (0.1 s by
  default): a job known ahead starts at its run_at, not up to an interval after it, and an
  idle pass costs one statement instead of a transaction;
- forward_due: scheduled and retry jobs whose run_at has come -> pending, wake-up pushed;
- fire_schedules: django-q2 Schedule rows whose slot has come -> one ledger job per slot,
  written in the same transaction that advances next_run (exactly once per slot);
- reap_expired_leases: active jobs whose worker stopped renewing -> run again;
- repush_lost: pending jobs whose wake-up vanished (Redis flushed or restarted, a cluster
  killed with prefetched tasks) -> pushed again.

Several dispatchers (one per qcluster process, on any host) can run at once: rows are
claimed with SELECT ... FOR UPDATE SKIP LOCKED and moved with conditional UPDATEs.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from croniter import croniter
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_q.models import Schedule
from django_q.utils import localtime

from jobs import broker, progress, services
from jobs.models import Heartbeat, Job, JobState
from jobs.queues import QUEUES
from jobs.registry import periodic_by_func
from jobs.system import SYSTEM_PERIODIC, load_periodic_call
from jobs.watchdog import Beat

logger = logging.getLogger(__name__)

FORWARD_BATCH = 500
REAP_BATCH = 200
EXPIRE_BATCH = 500
REPUSH_BATCH = 500
SCHEDULE_BATCH = 50
BROKEN_SCHEDULE_RETRY = timedelta(minutes=1)


def _locked(qs):
    return qs.select_for_update(skip_locked=True)


def _as_aware(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite (embedded mode) returns text
        value = parse_datetime(value)
    return value if timezone.is_aware(value) else value.replace(tzinfo=dt_timezone.utc)  # stored in UTC


def next_due_times() -> tuple[datetime | None, datetime | None]:
    """(earliest run_at of a scheduled or retry job, earliest next_run of a live Schedule), in
    one statement without locks. Each job MIN is an equality on the first column of
    job_state_run_at_idx, which MariaDB answers from the index's end ("Select tables
    optimized away"), not by scanning: one million jobs scheduled ahead cost nothing here. A
    row written a moment after this read is seen by the next pass, at most an interval later,
    as before."""
    job = connection.ops.quote_name(Job._meta.db_table)
    sched = connection.ops.quote_name(Schedule._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT MIN(run_at) FROM {job} WHERE state = %s), "
            f"(SELECT MIN(run_at) FROM {job} WHERE state = %s), "
            f"(SELECT MIN(next_run) FROM {sched} WHERE repeats <> 0)",
            [JobState.SCHEDULED.value, JobState.RETRY.value])
        scheduled, retry, schedule = (_as_aware(v) for v in cursor.fetchone())
    jobs = [t for t in (scheduled, retry) if t is not None]
    return (min(jobs) if jobs else None), schedule


def forward_due(*, now: datetime | None = None, limit: int = FORWARD_BATCH) -> int:
    """Move due scheduled/retry jobs to pending and push their wake-ups. Returns the count."""
    now = now or timezone.now()
    paused = services.paused_queues()
    with transaction.atomic():
        rows = list(
            _locked(Job.objects.filter(state__in=[JobState.SCHEDULED, JobState.RETRY], run_at__lte=now)
                    .exclude(queue__in=paused).order_by("run_at"))
            .values_list("pk", "queue", "timeout")[:limit]
        )
        if not rows:
            return 0
        Job.objects.filter(pk__in=[r[0] for r in rows],
                           state__in=[JobState.SCHEDULED, JobState.RETRY]).update(
            state=JobState.PENDING, dispatched_at=now)
    # After commit: a crash here leaves pending rows with no wake-up, which repush_lost finds.
    broker.push(rows)
    return len(rows)


def expire_overdue(*, now: datetime | None = None, limit: int = EXPIRE_BATCH) -> int:
    """Jobs not started by their deadline end expired (services.jobs_expire_overdue)."""
    return len(services.jobs_expire_overdue(now=now or timezone.now(), limit=limit))


def reap_expired_leases(*, now: datetime | None = None, limit: int = REAP_BATCH) -> int:
    now = now or timezone.now()
    count = 0
    for job in Job.objects.filter(state=JobState.ACTIVE, lease_expires_at__lt=now).order_by(
            "lease_expires_at")[:limit]:
        if services.job_lease_expired(job, now=now):
            count += 1
    return count


def repush_lost(*, now: datetime | None = None, limit: int = REPUSH_BATCH) -> int:
    """Re-push pending jobs whose wake-up is older than JOBS_REPUSH_AFTER while their queue's
    Redis list is empty (the wake-up was lost, or is held by a busy or dead cluster's
    prefetch), or while the queue is stalled: wake-ups waiting and no claim for
    JOBS_STALL_AFTER (whatever holds the list, nothing moves; jobs/progress.py). A duplicate
    wake-up is harmless (the claim refuses a job that is no longer pending) and bounded: a
    re-push resets dispatched_at, so each job gets at most one extra wake-up per
    JOBS_REPUSH_AFTER."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOBS_REPUSH_AFTER)
    total = 0
    for queue in QUEUES:
        if services.is_queue_paused(queue):
            continue
        depth = broker.queue_depth(queue)
        if depth > 0 and not progress.queue_stalled(queue, depth, now=now.timestamp()):
            continue
        lost = Job.objects.filter(queue=queue, state=JobState.PENDING, dispatched_at__lt=cutoff)
        # A plain look first (one statement on job_queue_state_idx): the locking transaction
        # below costs four, and nearly always finds nothing.
        if not lost.exists():
            continue
        with transaction.atomic():
            rows = list(
                _locked(lost.order_by("dispatched_at"))
                .values_list("pk", "queue", "timeout")[:limit]
            )
            if not rows:
                continue
            Job.objects.filter(pk__in=[r[0] for r in rows], state=JobState.PENDING).update(dispatched_at=now)
        broker.push(rows)
        logger.warning("re-pushed %d pending %s job(s) whose wake-up was lost: ids %s",
                       len(rows), queue, [r[0] for r in rows[:20]])
        total += len(rows)
    return total


def repush_after_cluster_death(queue: str, *, before: datetime, limit: int) -> int:
    """A cluster of `queue` died: the wake-ups its pusher had taken (prefetched, or in flight
    to it when it died) are gone. The pusher takes from the head of the list, so they belong to
    the pending jobs dispatched longest ago: push the `limit` oldest again now rather than after
    JOBS_REPUSH_AFTER. Duplicates are harmless (the claim refuses a job not pending)."""
    with transaction.atomic():
        rows = list(
            _locked(Job.objects.filter(queue=queue, state=JobState.PENDING, dispatched_at__lte=before)
                    .order_by("dispatched_at"))
            .values_list("pk", "queue", "timeout")[:limit]
        )
        if not rows:
            return 0
        Job.objects.filter(pk__in=[r[0] for r in rows], state=JobState.PENDING).update(dispatched_at=timezone.now())
    broker.push(rows)
    logger.warning("re-pushed %d pending %s job(s) after its cluster died: ids %s", len(rows), queue,
                   [r[0] for r in rows[:20]])
    return len(rows)


# ---------------------------------------------------------------- periodic schedules


def next_slot(schedule: Schedule, now: datetime) -> datetime | None:
    """The first slot after `now`. Missed slots are not replayed: after downtime the overdue
    slot fires once and the schedule continues from now. None for a spent ONCE schedule."""
    if schedule.schedule_type == Schedule.ONCE:
        return None
    if schedule.schedule_type == Schedule.CRON:
        return croniter(schedule.cron, localtime(now)).get_next(datetime)
    nxt = schedule.next_run
    for _ in range(10_000):  # bounded: a week of one-minute slots
        nxt = schedule.calculate_next_run(nxt)
        if nxt > now:
            return nxt
    return schedule.calculate_next_run(now)


def _schedule_queue(schedule: Schedule) -> str:
    if schedule.cluster in QUEUES:
        return schedule.cluster
    if schedule.cluster:
        logger.error("schedule %r names unknown queue %r; running it on default", schedule.name, schedule.cluster)
    return "default"


def fire_schedules(*, now: datetime | None = None, limit: int = SCHEDULE_BATCH) -> int:
    """One ledger job per due Schedule slot, each schedule in its own savepoint: a broken
    row is logged and skipped (its next_run still advances) and cannot undo the others
    (django-q2's scheduler re-fires every schedule when one fails, issue #293)."""
    now = now or timezone.now()
    fired = 0
    with transaction.atomic():
        due = list(_locked(Schedule.objects.exclude(repeats=0).filter(next_run__lte=now)
                           .order_by("next_run"))[:limit])
        for schedule in due:
            try:
                with transaction.atomic():
                    fired += _fire_one(schedule, now)
            except Exception:
                logger.exception("schedule %r (id %s) could not fire; skipping slot %s",
                                 schedule.name, schedule.pk, schedule.next_run)
                try:
                    nxt = next_slot(schedule, now)
                except Exception:
                    # Its timing is unusable (blank cron, unknown type): look again later.
                    # Raising here would undo the whole pass, and every later pass, so no
                    # schedule would fire again; fixing the row resumes it.
                    nxt = now + BROKEN_SCHEDULE_RETRY
                _advance(schedule, nxt)
    return fired


def _fire_one(schedule: Schedule, now: datetime) -> int:
    slot = schedule.next_run
    nxt = next_slot(schedule, now)  # an unusable timing fails before a job exists
    if periodic_by_func(schedule.func) is None:
        # Fired all the same: its job goes dead with the reason, which the dead-jobs alert
        # reports, instead of the row failing quietly here on every slot.
        logger.error("schedule %r names %r, which is not a declared periodic task; its job will go dead",
                     schedule.name, schedule.func)
    else:
        # Unreadable args fail here, not in a worker.
        load_periodic_call(schedule.func, schedule.args or "", schedule.kwargs or "", name=schedule.name)
    job_id = services.job_create(
        job_type=SYSTEM_PERIODIC, queue=_schedule_queue(schedule),
        payload={"schedule_id": schedule.pk, "name": schedule.name or str(schedule.pk),
                 "func": schedule.func, "slot": slot.isoformat(),
                 "args": schedule.args or "", "kwargs": schedule.kwargs or ""},
        unique_key=f"schedule:{schedule.pk}:{int(slot.timestamp())}",
    )
    schedule.task = f"job:{job_id}"
    _advance(schedule, nxt)
    logger.info("schedule %r slot %s -> job %s (late by %.3f s)", schedule.name, slot.isoformat(), job_id,
                (now - slot).total_seconds())
    return 1


def _advance(schedule: Schedule, nxt: datetime | None) -> None:
    if nxt is None:  # ONCE: spent, as django-q2 does it
        if schedule.repeats < 0:
            Schedule.objects.filter(pk=schedule.pk).delete()
            return
        schedule.repeats = 0
    else:
        schedule.next_run = nxt
        if schedule.repeats > 0:
            schedule.repeats -= 1
    Schedule.objects.filter(pk=schedule.pk).update(next_run=schedule.next_run, repeats=schedule.repeats,
                                                    task=schedule.task)


# ---------------------------------------------------------------- the loop


class Dispatcher:
    """Runs the passes above on their cadences until `stop` is set."""

    def __init__(self, name: str):
        self.name = name
        self._due = {"reap": 0.0, "repush": 0.0, "beat": 0.0, "expire": 0.0}
        self.errors_in_a_row = 0
        self.progress = Beat("dispatcher")  # read by the supervisor's watchdog
        # Set by the watchdog when it has started a replacement: this one ends at its next turn.
        self.retired = threading.Event()

    def run(self, stop: threading.Event) -> None:
        logger.info("dispatcher %s running (interval %.2f s)", self.name, settings.JOBS_DISPATCH_INTERVAL)
        while not stop.is_set():
            self.progress.beat()
            if self.retired.is_set():
                logger.warning("dispatcher %s came back after it was replaced: ending", self.name)
                return
            try:
                pause = self.tick()
                self.errors_in_a_row = 0
            except Exception:
                # MySQL or Redis away: keep trying, slower, without flooding the log.
                self.errors_in_a_row += 1
                if self.errors_in_a_row <= 3 or self.errors_in_a_row % 60 == 0:
                    logger.exception("dispatcher pass failed (%d in a row)", self.errors_in_a_row)
                close_old_connections()
                stop.wait(min(0.5 * self.errors_in_a_row, 5.0))
                continue
            if pause > 0:
                stop.wait(pause)
        logger.info("dispatcher %s stopped", self.name)

    def _every(self, key: str, seconds: float) -> bool:
        now = time.monotonic()
        if now >= self._due[key]:
            self._due[key] = now + seconds
            return True
        return False

    def tick(self) -> float:
        """One pass. Returns the seconds to sleep before the next: 0 when a full batch was
        forwarded (more may be due), else until the earliest known run_at or schedule slot,
        at most JOBS_DISPATCH_INTERVAL (what is written meanwhile is seen by then)."""
        from jobs import clock

        interval = settings.JOBS_DISPATCH_INTERVAL
        # Due-ness by the database's clock, the same for every host (jobs/clock.py).
        now = clock.now()
        next_job, next_schedule = next_due_times()
        forwarded = 0
        if self._every("expire", 0.5):
            # Before forwarding: a job past its deadline is never pushed.
            expire_overdue(now=now)
        if next_job is not None and next_job <= now:
            forwarded = forward_due(now=now)
        if next_schedule is not None and next_schedule <= now:
            fire_schedules(now=now)
        if forwarded or (next_schedule is not None and next_schedule <= now):
            # What was due is gone: read what comes next, so the sleep below ends at it.
            now = clock.now()
            next_job, next_schedule = next_due_times()
        if self._every("reap", 1.0):
            reap_expired_leases()
        if self._every("repush", 2.0):
            repush_lost()
        if self._every("beat", 5.0):
            Heartbeat.objects.update_or_create(
                name=f"dispatcher:{self.name}",
                defaults={"kind": "dispatcher", "seen_at": timezone.now(), "details": {}})
        if forwarded >= FORWARD_BATCH:
            return 0.0
        pause = interval
        for at in (next_job, next_schedule):
            if at is not None:
                # A due time in a paused queue stays <= now: the plain interval then, as before.
                ahead = (at - clock.now()).total_seconds()
                if 0 < ahead < pause:
                    pause = ahead
        return pause
