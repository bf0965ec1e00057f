"""Cancelling jobs, running ones included.

A job that is not running ends `cancelled` at once. A running one cannot be stopped from
here (its worker may be on another host): the row is marked (cancel_requested_at) and the
worker's lease keeper, which polls that column every JOBS_CANCEL_POLL_SECONDS while a job
runs (jobs/worker.py), tells the handler (`job.cancel_requested()`); a handler that stops
ends the job cancelled; one that does not is ended, after its type's cancel grace, with its
worker process, which django-q2 replaces as after any worker death.

Whatever ends the attempt of a job someone asked to cancel (an error, a timeout, a lease
that ran out, shutdown), it ends `cancelled`, never retried (running.end_if_cancel_requested),
and its unique key is freed. Each move is a conditional UPDATE on state (and `claims` for a
running job), as everywhere in the state machine."""

from __future__ import annotations

import logging

from django.utils import timezone

from jobs.events import log_job_event
from jobs.models import Job, JobState
from jobs.services.running import CANCELLED_RESULT, end_if_cancel_requested

logger = logging.getLogger(__name__)

# Not running: cancelled at once.
WAITING_STATES = (JobState.SCHEDULED, JobState.PENDING, JobState.RETRY)
MAX_BY_CHARS = 150  # Job.cancelled_by


def jobs_cancel(job_ids, *, by: str = "") -> int:
    """Cancel jobs that are not finished: waiting ones end cancelled now; running ones are
    asked to stop (see the module's docstring). Records who and when. Returns how many
    were cancelled or asked (a running job asked before is not counted again)."""
    ids = list(job_ids)
    now = timezone.now()
    by = (by or "")[:MAX_BY_CHARS]
    waiting = Job.objects.filter(pk__in=ids, state__in=WAITING_STATES).update(
        state=JobState.CANCELLED, finished_at=now, cancelled_at=now, cancelled_by=by, live_key=None,
        waiting_reason="", result=f"{CANCELLED_RESULT} by {by or 'a person'}"[:200])
    running = Job.objects.filter(pk__in=ids, state=JobState.ACTIVE, cancel_requested_at__isnull=True).update(
        cancel_requested_at=now, cancelled_by=by)
    if waiting or running:
        logger.info("cancel by %s: %d waiting job(s) cancelled, %d running job(s) asked to stop; ids %s",
                    by or "?", waiting, running, ids[:20])
    return waiting + running


def job_cancel_requested(job_id: int, claim: int) -> bool:
    """For the lease keeper's poll: has someone asked attempt `claim` of this job to stop?
    One primary-key read."""
    return Job.objects.filter(pk=job_id, claims=claim, state=JobState.ACTIVE,
                              cancel_requested_at__isnull=False).exists()


def job_end_cancelled(job: Job | None = None, *, job_id: int | None = None, claim: int | None = None,
                      note: str = "") -> bool:
    """active -> cancelled for a job whose cancel was asked, fenced by its claim: the handler
    stopped (note "stopped by its handler"), or its grace ran out and its worker is about to
    be ended. False if the job moved meanwhile (it finished first)."""
    if job is not None:
        job_id, claim = job.pk, job.claims
    running = Job.objects.filter(pk=job_id, state=JobState.ACTIVE, claims=claim)
    done = end_if_cancel_requested(running, now=timezone.now(), note=note)
    if done:
        row = job or Job.objects.filter(pk=job_id).first()
        if row is not None:
            log_job_event("cancelled", row, reason=note or "cancel requested")
    return bool(done)
