"""What a django-q2 worker process runs for each wake-up: claim the job in the ledger,
hold its lease while the handler runs, record the outcome.

django-q2 on Redis delivers at most once and knows nothing of retries; all of that lives
here and in jobs/services/. run_job never lets a handler's exception reach django-q2,
except its own TimeoutException, which must propagate so the worker process is replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone
from django_q.exceptions import TimeoutException

from jobs import cancelflags, limits, services
from jobs.services.completing import deferred
from jobs.services.running import Completion
from jobs.errors import PermanentError, Snooze, UnknownJobType
from jobs.events import log_job_event
from jobs.progress import note_claim
from jobs.registry import get_job_type

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """One daemon thread per worker process renewing the lease of the job it is running,
    so that a job longer than the lease is not taken for dead, and a dead process's job is
    (its lease stops being renewed).

    It also watches for a cancel: every JOBS_CANCEL_POLL_SECONDS it reads the row's
    cancel_requested_at (one primary-key read), so the request reaches the handler within
    about that on any host (Job.cancel_requested()); a handler still running `grace`
    seconds later is ended: the job is recorded cancelled (fenced by its claim) and this
    worker process kills itself, which django-q2's sentinel sees as any worker death and
    replaces. The lock is held from that UPDATE to the kill, so the main thread cannot
    release this job and claim another meanwhile."""

    def __init__(self):
        self._lock = threading.Lock()
        self._current: tuple[int, int, float] | None = None  # job id, claim, cancel grace
        self._held = None  # the attempt's concurrency slot (jobs/limits.py), renewed with the lease
        self._cancel_seen_at: float | None = None  # monotonic
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, job_id: int, claim: int, grace: float | None = None, held=None) -> None:
        with self._lock:
            self._held = held
            self._current = (job_id, claim, settings.JOBS_CANCEL_GRACE if grace is None else grace)
            self._cancel_seen_at = None
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            if self._current is not None:
                cancelflags.forget(*self._current[:2])
            self._current = None
            self._held = None
            self._cancel_seen_at = None

    def _run(self) -> None:
        poll = min(settings.JOBS_CANCEL_POLL_SECONDS, settings.JOBS_HEARTBEAT_SECONDS)
        renew_due = time.monotonic() + settings.JOBS_HEARTBEAT_SECONDS
        while True:
            self._wake.wait(poll)
            with self._lock:
                current = self._current
            if current is None:
                renew_due = time.monotonic() + settings.JOBS_HEARTBEAT_SECONDS
                continue
            if time.monotonic() >= renew_due:
                renew_due = time.monotonic() + settings.JOBS_HEARTBEAT_SECONDS
                self._renew(current[:2])
                try:
                    limits.renew(self._held)
                except Exception:
                    logger.exception("concurrency slot of job %s not renewed", current[0])
            try:
                self._watch_cancel(current)
            except Exception:
                logger.exception("cancel check for job %s failed; trying again next poll", current[0])
                connection.close()

    def _renew(self, current: tuple[int, int]) -> None:
        # A renewal that failed (its connection timed out: the server vanished) is tried
        # again at once on a new connection, not a heartbeat later: the lease must not run
        # out under a live job (JOBS_DB_TIMEOUT + JOBS_HEARTBEAT_SECONDS < the lease).
        for attempt in (1, 2):
            try:
                close_old_connections()
                if not services.job_renew_lease(*current):
                    logger.warning("job %s claim %s lost its lease", *current)
                break
            except Exception:
                logger.exception("lease renewal for job %s failed (try %d of 2)", current[0], attempt)
                connection.close()

    def _watch_cancel(self, current: tuple[int, int, float]) -> None:
        job_id, claim, grace = current
        if self._cancel_seen_at is None:
            if not services.job_cancel_requested(job_id, claim):
                return
            with self._lock:
                if self._current != current:
                    return
                self._cancel_seen_at = time.monotonic()
                cancelflags.mark(job_id, claim)
            logger.warning("job %s claim %s: cancel requested; the handler has %.1f s to stop", job_id, claim, grace)
            if grace > 0:
                return
        if time.monotonic() - self._cancel_seen_at < grace:
            return
        with self._lock:
            if self._current != current:
                return  # the handler stopped meanwhile; run_job records it
            if not services.job_end_cancelled(job_id=job_id, claim=claim,
                                              note=f"its handler did not stop within {grace:g} s; worker ended"):
                return  # it finished first
            logger.error("job %s claim %s: cancelled; its handler did not stop within %.1f s: ending worker "
                         "process %s", job_id, claim, grace, os.getpid())
            # Jobs this worker finished but has not recorded yet must not be lost with it.
            deferred.flush_now()
            limits.release(self._held)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


_lease = LeaseKeeper()


def run_job(job_id: int) -> str:
    """The django-q2 task function for every job type."""
    completing = deferred.take()  # finished jobs this worker has not recorded yet (none if not deferring)
    try:
        job = services.job_claim(job_id, worker=services.worker_id(), completing=completing)
    except BaseException:
        deferred.give_back(completing)
        raise
    if job is None:
        logger.debug("job %s: wake-up skipped, not pending (duplicate or stale)", job_id)
        return "skipped"
    note_claim(job.queue)  # progress for the stall and wedge checks (jobs/progress.py)
    if services.is_queue_paused(job.queue):
        services.job_put_back(job, reason=f"queue {job.queue} is paused")
        return "paused"
    if job.expires_at is not None and job.started_at > job.expires_at:
        # Forwarded before its deadline, claimed after it (a long queue): still never runs.
        services.job_expire_claimed(job)
        return "expired"
    try:
        declared = get_job_type(job.job_type)
    except UnknownJobType:
        declared = None  # it goes dead below, with its error
    held = None
    if declared is not None and declared.limits is not None:
        held, wait = limits.acquire(declared.name, declared.limits, job)
        if wait is not None:
            # Over a limit: wait without spending a retry, the reason shown on the job.
            services.job_snooze(job, until=wait.until, reason=wait.reason)
            return "limited"
    _lease.hold(job.pk, job.claims, declared.cancel_grace if declared is not None else None, held)
    log_job_event("started", job, lateness_ms=int((job.started_at - job.run_at).total_seconds() * 1000))
    try:
        job_type = get_job_type(job.job_type)
        payload = job_type.payload.from_json(job.payload)
        result = job_type.handler(payload, job)
        if job.cancel_requested():
            # The handler saw the cancel and stopped: cancelled, not completed.
            services.job_end_cancelled(job, note="stopped by its handler")
            return "cancelled"
    except Snooze as snooze:
        services.job_snooze(job, until=snooze.until, reason=snooze.reason)
        return "snoozed"
    except TimeoutException as exc:
        services.job_fail(job, error=f"timeout: {exc}", tb="", exception_class=services.exception_path(exc),
                          error_object=exc)
        raise
    except PermanentError as exc:
        services.job_fail(job, error=f"{type(exc).__name__}: {exc}", tb=services.format_exception(exc)[1],
                          permanent=True, exception_class=services.exception_path(exc))
        return "dead"
    except (Exception, SystemExit) as exc:
        # SystemExit too (sys.exit() or exit() in a handler or a third-party task): a failed
        # attempt, retried, instead of a worker process gone and a 20-second lease to wait out.
        # django-q2's TimeoutException is a SystemExit and is caught above.
        error, tb = services.format_exception(exc)
        services.job_fail(job, error=error, tb=tb, exception_class=services.exception_path(exc), error_object=exc)
        return "failed"
    finally:
        _lease.release()
        limits.release(held)
    # Text MySQL can store: a lone surrogate would fail the write, and with it every next claim.
    result = str(result).encode("utf-8", "replace").decode("utf-8") if result is not None else ""
    if deferred.enabled:
        deferred.add(Completion(job, timezone.now(), result))
    else:
        services.job_complete(job, result=result)
    return "completed"

