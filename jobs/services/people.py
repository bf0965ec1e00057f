"""What people do to jobs from the admin and `manage.py jobs`: retry now, cancel, delete."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from jobs.events import log_job_event
from jobs.models import CANCELLABLE_STATES, RETRYABLE_STATES, Job, JobState
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


def jobs_cancel(job_ids) -> int:
    """Scheduled, pending or retry jobs -> cancelled. Running jobs are not interrupted."""
    now = timezone.now()
    return Job.objects.filter(pk__in=list(job_ids), state__in=CANCELLABLE_STATES).update(
        state=JobState.CANCELLED, finished_at=now, live_key=None, waiting_reason="",
        result="cancelled by a person")


def jobs_delete(job_ids) -> int:
    """Delete jobs that are not running (a running job's worker still owns it)."""
    deleted, _ = Job.objects.filter(pk__in=list(job_ids)).exclude(state=JobState.ACTIVE).delete()
    return deleted
