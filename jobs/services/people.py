"""What people do to jobs from the admin and `manage.py jobs`: retry now, run now, delete
(cancel: jobs/services/cancelling.py)."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from jobs.events import log_job_event
from jobs.models import RETRYABLE_STATES, RUN_NOW_STATES, Job, JobState
from jobs.services.creating import push_after_commit
from jobs.services.pauses import is_queue_paused

logger = logging.getLogger(__name__)


def jobs_retry_now(job_ids) -> int:
    """Dead or retry jobs -> pending now, attempts reset (admin "Retry now", `jobs retry`).
    A dead job whose unique key was taken by a newer live job is left dead."""
    now = timezone.now()
    count = 0
    with transaction.atomic():
        for job in Job.objects.select_for_update().filter(pk__in=list(job_ids), state__in=RETRYABLE_STATES):
            live_key = job.unique_key
            if live_key and Job.objects.filter(live_key=live_key).exclude(pk=job.pk).exists():
                logger.warning("job %s not retried: job for key %s is already live", job.pk, live_key)
                continue
            paused = is_queue_paused(job.queue)
            Job.objects.filter(pk=job.pk).update(
                state=JobState.SCHEDULED if paused else JobState.PENDING, attempts=0, run_at=now,
                finished_at=None, dispatched_at=None if paused else now, live_key=live_key, waiting_reason="")
            if not paused:
                push_after_commit(job.pk, job.queue, job.timeout)
            log_job_event("retry_requested", job)
            count += 1
    return count


def jobs_delete(job_ids) -> int:
    """Delete jobs that are not running (a running job's worker still owns it)."""
    deleted, _ = Job.objects.filter(pk__in=list(job_ids)).exclude(state=JobState.ACTIVE).delete()
    return deleted


def jobs_run_now(job_ids, *, by: str = "") -> int:
    """Scheduled jobs, and retry jobs waiting for their backoff -> due now (pending, or
    scheduled at now in a paused queue), keeping payload, unique key and attempts. Records
    who and when. Returns how many were moved."""
    now = timezone.now()
    by = (by or "")[:150]
    count = 0
    with transaction.atomic():
        for job in Job.objects.select_for_update().filter(pk__in=list(job_ids), state__in=RUN_NOW_STATES):
            paused = is_queue_paused(job.queue)
            Job.objects.filter(pk=job.pk, state=job.state).update(
                state=JobState.SCHEDULED if paused else JobState.PENDING, run_at=now,
                dispatched_at=None if paused else now, run_now_at=now, run_now_by=by)
            if not paused:
                push_after_commit(job.pk, job.queue, job.timeout)
            log_job_event("run_now_requested", job, by=by)
            count += 1
    return count


def schedule_run_now(schedule_id: int, *, by: str = "") -> int:
    """One extra slot of a periodic task (a django-q2 Schedule row) now: a `system:periodic`
    job like the dispatcher's, with its own unique key (two clicks in the same second make
    one job), without touching next_run, so the regular slots keep their keys and times and
    each still runs once. Returns the job id. Raises Schedule.DoesNotExist."""
    from django_q.models import Schedule

    from jobs.queues import QUEUES
    from jobs.services.creating import job_create
    from jobs.system import SYSTEM_PERIODIC, load_periodic_call

    schedule = Schedule.objects.get(pk=schedule_id)
    # Unreadable args or an undeclared function fail here, for the person who asked.
    load_periodic_call(schedule.func, schedule.args or "", schedule.kwargs or "", name=schedule.name)
    now = timezone.now()
    by = (by or "")[:150]
    queue = schedule.cluster if schedule.cluster in QUEUES else "default"
    with transaction.atomic():
        job_id = job_create(
            job_type=SYSTEM_PERIODIC, queue=queue,
            payload={"schedule_id": schedule.pk, "name": schedule.name or str(schedule.pk), "func": schedule.func,
                     "slot": now.isoformat(), "args": schedule.args or "", "kwargs": schedule.kwargs or ""},
            unique_key=f"schedule:{schedule.pk}:now:{int(now.timestamp())}")
        Job.objects.filter(pk=job_id).update(run_now_at=now, run_now_by=by)
    logger.info("schedule %r (id %s) run now by %s -> job %s; next_run stays %s", schedule.name, schedule.pk,
                by or "?", job_id, schedule.next_run)
    return job_id
