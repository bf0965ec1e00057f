"""The job state machine, one module per concern:

- creating.py   enqueue: validate, write the row, push after commit; unique keys move a live job
- running.py    claim, lease, complete, fail (retry / dead), snooze, lease expiry
- pauses.py     paused queues
- cancelling.py cancel, running jobs included (admin and CLI)
- people.py     retry now, run now, delete (admin and CLI)

Callers use `from jobs import services; services.job_claim(...)`: the names below are the
package's interface."""

from jobs.services.creating import job_cancel_unique, job_create, job_create_many, push_after_commit
from jobs.services.pauses import is_queue_paused, paused_queues, queue_pause, queue_resume
from jobs.services.cancelling import job_cancel_requested, job_end_cancelled, jobs_cancel
from jobs.services.people import jobs_delete, jobs_retry_now, jobs_run_now, schedule_run_now
from jobs.services.running import (
    backoff_delay,
    retry_delay,
    exception_path,
    fetch_job,
    format_exception,
    job_claim,
    job_expire_claimed,
    jobs_expire_overdue,
    job_complete,
    job_fail,
    job_lease_expired,
    job_put_back,
    job_renew_lease,
    job_snooze,
    jobs_release_workers,
    worker_id,
)

__all__ = [
    "job_expire_claimed", "jobs_expire_overdue", "job_cancel_requested", "job_end_cancelled", "jobs_run_now", "schedule_run_now", "retry_delay",
    "backoff_delay", "exception_path", "fetch_job", "format_exception", "is_queue_paused", "job_cancel_unique", "job_claim",
    "job_complete", "job_create", "job_create_many", "job_fail", "job_lease_expired", "job_put_back",
    "job_renew_lease", "job_snooze", "jobs_cancel", "jobs_delete", "jobs_release_workers", "jobs_retry_now",
    "paused_queues", "push_after_commit", "queue_pause", "queue_resume", "worker_id",
]
