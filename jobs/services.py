"""The job state machine. Every transition is a conditional UPDATE on the row's current
state (and, for a running job, its attempt number, which fences off a worker whose lease
was taken over), so two processes can never both move a job."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from contextlib import nullcontext
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction
from django.db.models import F
from django.utils import timezone

from jobs import broker, clock
from jobs.events import log_job_event
from jobs.models import Job, JobState, QueuePause
from jobs.errors import PayloadError
from jobs.types import QUEUES, get_job_type, validate_payload

logger = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 20
MAX_TRACEBACK_CHARS = 8000


def backoff_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): 1, 2, 4, 8, 16, 16..."""
    return min(settings.JOBS_BACKOFF_BASE * (2 ** max(attempt - 1, 0)), settings.JOBS_BACKOFF_CAP)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _push_after_commit(job_id: int, queue: str, timeout: int) -> None:
    def push():
        try:
            broker.push([(job_id, queue, timeout)])
        except Exception:
            # The row is pending in the ledger; the dispatcher re-pushes lost wake-ups.
            logger.exception("push of job %s to %s failed; the dispatcher will re-push it", job_id, queue)

    transaction.on_commit(push)


# ---------------------------------------------------------------- creating jobs


MAX_TIMEOUT = 600


def _resolve_run_at(run_at, delay, now) -> datetime:
    if run_at is not None and delay is not None:
        raise ValueError("run_at and delay: give one, not both")
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError(f"delay: must be >= 0, got {seconds!r}")
        return now + timedelta(seconds=seconds)
    if run_at is not None and (not isinstance(run_at, datetime) or timezone.is_naive(run_at)):
        raise ValueError(f"run_at: must be a timezone-aware datetime, got {run_at!r}")
    return run_at or now


def _resolve_timeout(jt, timeout) -> int:
    if timeout is None:
        return jt.timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout: must be whole seconds from 1 to {MAX_TIMEOUT}, got {timeout!r}")
    return timeout


def _news_id(data) -> int | None:
    return data.get("news_id") if isinstance(data.get("news_id"), int) else None


def job_create(*, job_type: str, payload, run_at: datetime | None = None,
               delay: float | timedelta | None = None, unique_key: str | None = None,
               queue: str | None = None, timeout: int | None = None) -> int:
    """Validate and record a job; push it after commit if it is due now. With a unique_key,
    an existing live job with that key is moved to the new run_at and payload instead."""
    jt = get_job_type(job_type)
    data = validate_payload(jt, payload)
    queue = queue or jt.queue
    if queue not in QUEUES:
        raise ValueError(f"queue: unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    now = clock.now()  # the database's clock: `delay` and due-ness agree on every host
    run_at = _resolve_run_at(run_at, delay, now)
    timeout = _resolve_timeout(jt, timeout)
    if unique_key is not None and not (0 < len(unique_key) <= 191):
        raise ValueError("unique_key: must be 1 to 191 characters")
    news_id = _news_id(data)

    for attempt in range(3):
        try:
            # Without a unique key the INSERT alone is atomic: no transaction round trips.
            with transaction.atomic() if unique_key else nullcontext():
                if unique_key:
                    moved = _move_live(unique_key, jt, queue, data, run_at, now)
                    if moved is not None:
                        return moved
                due = run_at <= now
                job = Job.objects.create(
                    job_type=jt.name, queue=queue, payload=data, max_retries=jt.max_retries,
                    timeout=timeout, run_at=run_at, news_id=news_id,
                    state=JobState.PENDING if due and not is_queue_paused(queue) else JobState.SCHEDULED,
                    dispatched_at=now if due else None,
                    unique_key=unique_key, live_key=unique_key,
                )
                if job.state == JobState.PENDING:
                    _push_after_commit(job.pk, queue, timeout)
                log_job_event("enqueued", job, run_at=run_at.isoformat())
                return job.pk
        except IntegrityError:
            # Another caller created the live job for this key between our look and our
            # insert; look again (and move theirs).
            if not unique_key or attempt == 2:
                raise
    raise AssertionError("unreachable")


def job_create_many(*, job_type: str, payloads: list, run_at: datetime | None = None,
                    delay: float | timedelta | None = None) -> list[int]:
    """Record many jobs of one type in one INSERT and push their wake-ups in one pipelined
    round trip after commit. For bulk producers; no unique keys."""
    jt = get_job_type(job_type)
    if len(payloads) > 10_000:
        raise ValueError(f"payloads: at most 10000 per call, got {len(payloads)}")
    datas = []
    for index, payload in enumerate(payloads):
        try:
            datas.append(validate_payload(jt, payload))
        except PayloadError as exc:
            raise PayloadError(f"payloads[{index}].{exc.field}", exc.detail) from None
    now = clock.now()  # the database's clock: `delay` and due-ness agree on every host
    run_at = _resolve_run_at(run_at, delay, now)
    due = run_at <= now and not is_queue_paused(jt.queue)
    with transaction.atomic():
        jobs = Job.objects.bulk_create([
            Job(job_type=jt.name, queue=jt.queue, payload=d, max_retries=jt.max_retries, timeout=jt.timeout,
                run_at=run_at, news_id=_news_id(d), state=JobState.PENDING if due else JobState.SCHEDULED,
                dispatched_at=now if due else None)
            for d in datas
        ], batch_size=1000)
        ids = [j.pk for j in jobs]
        if None in ids:  # backends that do not return ids from bulk inserts
            raise RuntimeError("bulk insert did not return ids")
        if due:
            transaction.on_commit(lambda: broker.push((i, jt.queue, jt.timeout) for i in ids))
    return ids


def _move_live(unique_key, jt, queue, data, run_at, now) -> int | None:
    live = Job.objects.select_for_update().filter(live_key=unique_key).first()
    if live is None:
        return None
    if live.state != JobState.ACTIVE and live.payload == data and live.run_at == run_at:
        return live.pk  # nothing to move: saving the same thing twice must not churn
    if live.state == JobState.ACTIVE:
        # Running now: it will find its payload stale. Release the key to its successor.
        Job.objects.filter(pk=live.pk).update(live_key=None)
        return None
    due = run_at <= now
    state = JobState.PENDING if due else JobState.SCHEDULED
    Job.objects.filter(pk=live.pk).update(
        payload=data, run_at=run_at, queue=queue, state=state,
        dispatched_at=now if due else None,
    )
    # A pending job moved to the future keeps a wake-up in Redis; the claim refuses it
    # because the row is no longer pending.
    if due and live.state != JobState.PENDING:
        _push_after_commit(live.pk, queue, jt.timeout)
    live.state = state
    log_job_event("moved", live, run_at=run_at.isoformat())
    return live.pk


def job_cancel_unique(unique_key: str, *, reason: str = "unscheduled") -> bool:
    """Cancel the live job holding unique_key. A running one is released from the key (its
    handler sees stale state and does nothing). Returns True if a job was affected."""
    with transaction.atomic():
        live = Job.objects.select_for_update().filter(live_key=unique_key).first()
        if live is None:
            return False
        if live.state == JobState.ACTIVE:
            Job.objects.filter(pk=live.pk).update(live_key=None)
            return True
        Job.objects.filter(pk=live.pk).update(
            state=JobState.CANCELLED, live_key=None, finished_at=timezone.now(), result=reason)
        log_job_event("cancelled", live, reason=reason)
        return True


# ---------------------------------------------------------------- running jobs


def _execute(sql: str, params: list) -> int:
    """Raw UPDATE on the hot path (claim, complete): the ORM's query building costs as much
    as the round trip itself for a no-op job. Returns the row count."""
    with connection.cursor() as cursor:
        cursor.execute(sql.format(table=Job._meta.db_table), params)
        return cursor.rowcount


def _dt(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


def job_claim(job_id: int, *, worker: str) -> Job | None:
    """pending -> active for one worker. None if another worker has it or it is no longer
    pending (a duplicate or stale wake-up)."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.JOBS_LEASE_SECONDS)
    claimed = _execute(
        "UPDATE {table} SET state=%s, attempts=attempts+1, started_at=%s, lease_expires_at=%s, worker=%s "
        "WHERE id=%s AND state=%s",
        [JobState.ACTIVE.value, _dt(now), _dt(lease), worker, job_id, JobState.PENDING.value])
    if not claimed:
        return None
    return _fetch_job(job_id)


def _fetch_job(job_id: int) -> Job:
    """Job.objects.get() costs four times the round trip itself on this hot path; on MySQL
    read the row with a plain cursor and convert the two kinds of column that need it."""
    if connection.vendor != "mysql":
        return Job.objects.get(pk=job_id)
    fields = Job._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {Job._meta.db_table} WHERE id = %s", [job_id])
        row = cursor.fetchone()
    if row is None:
        raise Job.DoesNotExist(f"job {job_id} does not exist")
    values = []
    for f, value in zip(fields, row):
        if value is not None:
            if isinstance(f, models.DateTimeField):
                value = value.replace(tzinfo=dt_timezone.utc)  # stored in UTC (USE_TZ)
            elif isinstance(f, models.JSONField) and isinstance(value, (str, bytes)):
                value = json.loads(value)
        values.append(value)
    return Job.from_db(connection.alias, [f.attname for f in fields], values)


def job_renew_lease(job_id: int, attempt: int) -> bool:
    return bool(Job.objects.filter(pk=job_id, state=JobState.ACTIVE, attempts=attempt).update(
        lease_expires_at=timezone.now() + timedelta(seconds=settings.JOBS_LEASE_SECONDS)))


def _running(job: Job):
    return Job.objects.filter(pk=job.pk, state=JobState.ACTIVE, attempts=job.attempts)


def job_complete(job: Job, *, result: str = "") -> bool:
    now = timezone.now()
    done = _execute(
        "UPDATE {table} SET state=%s, finished_at=%s, lease_expires_at=NULL, live_key=NULL, result=%s "
        "WHERE id=%s AND state=%s AND attempts=%s",
        [JobState.COMPLETED.value, _dt(now), (result or "")[:2000], job.pk, JobState.ACTIVE.value, job.attempts])
    if done:
        log_job_event("completed", job, duration_ms=_ms(job.started_at, now))
    else:
        logger.warning("job %s attempt %s finished after losing its lease; result not recorded",
                       job.pk, job.attempts)
    return bool(done)


def _error_entry(job: Job, message: str, tb: str, now: datetime) -> dict:
    return {"attempt": job.attempts, "at": now.isoformat(), "worker": job.worker,
            "error": message[:2000], "traceback": tb[-MAX_TRACEBACK_CHARS:]}


def job_fail(job: Job, *, error: str, tb: str = "", permanent: bool = False) -> str:
    """Record a failed attempt: retry with backoff, or dead when permanent or out of retries.
    Returns the new state."""
    now = timezone.now()
    errors = (list(job.errors or []) + [_error_entry(job, error, tb, now)])[-MAX_ERRORS_KEPT:]
    retries_used = job.attempts - 1
    if permanent or retries_used >= job.max_retries:
        state, changes = JobState.DEAD, {"finished_at": now, "live_key": None}
    else:
        delay = backoff_delay(job.attempts)
        state, changes = JobState.RETRY, {"run_at": now + timedelta(seconds=delay)}
    updated = _running(job).update(state=state, last_error=f"{error}\n\n{tb}".strip()[:MAX_TRACEBACK_CHARS],
                                   errors=errors, lease_expires_at=None, **changes)
    if not updated:
        logger.warning("job %s attempt %s failed after losing its lease: %s", job.pk, job.attempts, error)
        return job.state
    job.state = state
    if state == JobState.DEAD:
        log_job_event("dead", job, level=logging.ERROR, error=error[:500], permanent=permanent,
                      duration_ms=_ms(job.started_at, now))
    else:
        log_job_event("retried", job, level=logging.WARNING, error=error[:500],
                      retry_in_s=changes["run_at"].timestamp() - now.timestamp())
    return state


def job_snooze(job: Job, *, until: datetime, reason: str) -> bool:
    """Put a running job back to wait until `until` without spending a retry."""
    done = _running(job).update(state=JobState.SCHEDULED, run_at=until, attempts=F("attempts") - 1,
                                lease_expires_at=None, last_error=reason[:2000])
    if done:
        log_job_event("snoozed", job, until=until.isoformat(), reason=reason)
    return bool(done)


def job_put_back(job: Job, *, reason: str) -> bool:
    """A worker picked up a job it must not run now (queue paused): back to scheduled,
    attempt not counted."""
    done = _running(job).update(state=JobState.SCHEDULED, run_at=timezone.now(),
                                attempts=F("attempts") - 1, lease_expires_at=None)
    if done:
        log_job_event("put_back", job, reason=reason)
    return bool(done)


def _ms(start: datetime | None, end: datetime) -> int | None:
    return None if start is None else int((end - start).total_seconds() * 1000)


# ---------------------------------------------------------------- queues


_pause_cache: tuple[float, frozenset[str]] = (0.0, frozenset())


def paused_queues(*, max_age: float = 1.0) -> frozenset[str]:
    """Paused queues, cached for a second: checked on every claim and dispatcher pass."""
    global _pause_cache
    fetched_at, queues = _pause_cache
    if time.monotonic() - fetched_at > max_age:
        queues = frozenset(QueuePause.objects.values_list("queue", flat=True))
        _pause_cache = (time.monotonic(), queues)
    return queues


def is_queue_paused(queue: str) -> bool:
    return queue in paused_queues()


def queue_pause(queue: str, *, by: str = "") -> bool:
    if queue not in QUEUES:
        raise ValueError(f"queue: unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    _, created = QueuePause.objects.get_or_create(queue=queue, defaults={"paused_by": by[:150]})
    _reset_pause_cache()
    return created


def queue_resume(queue: str) -> bool:
    if queue not in QUEUES:
        raise ValueError(f"queue: unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    deleted, _ = QueuePause.objects.filter(queue=queue).delete()
    _reset_pause_cache()
    return bool(deleted)


def _reset_pause_cache():
    global _pause_cache
    _pause_cache = (0.0, frozenset())


# ---------------------------------------------------------------- people acting on jobs


def jobs_retry_now(job_ids) -> int:
    """Dead or retry jobs -> pending now, attempts reset (admin "Retry now", `jobs retry`).
    A dead job whose unique key was taken by a newer live job is left dead."""
    now = timezone.now()
    count = 0
    with transaction.atomic():
        for job in Job.objects.select_for_update().filter(
                pk__in=list(job_ids), state__in=[JobState.DEAD, JobState.RETRY]):
            live_key = job.unique_key
            if live_key and Job.objects.filter(live_key=live_key).exclude(pk=job.pk).exists():
                logger.warning("job %s not retried: job for key %s is already live", job.pk, live_key)
                continue
            paused = is_queue_paused(job.queue)
            Job.objects.filter(pk=job.pk).update(
                state=JobState.SCHEDULED if paused else JobState.PENDING, attempts=0, run_at=now,
                finished_at=None, dispatched_at=None if paused else now, live_key=live_key)
            if not paused:
                _push_after_commit(job.pk, job.queue, job.timeout)
            log_job_event("retry_requested", job)
            count += 1
    return count


def jobs_cancel(job_ids) -> int:
    """Scheduled, pending or retry jobs -> cancelled. Running jobs are not interrupted."""
    now = timezone.now()
    return Job.objects.filter(
        pk__in=list(job_ids),
        state__in=[JobState.SCHEDULED, JobState.PENDING, JobState.RETRY],
    ).update(state=JobState.CANCELLED, finished_at=now, live_key=None, result="cancelled by a person")


def jobs_delete(job_ids) -> int:
    """Delete jobs that are not running (a running job's worker still owns it)."""
    deleted, _ = Job.objects.filter(pk__in=list(job_ids)).exclude(state=JobState.ACTIVE).delete()
    return deleted


def format_exception(exc: BaseException) -> tuple[str, str]:
    return f"{type(exc).__name__}: {exc}", "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))



def job_lease_expired(job: Job, *, now: datetime) -> str | None:
    """The worker holding `job` stopped renewing its lease (killed, host lost). Run it again
    at once, counting the lost attempt so a job that kills its worker is not retried
    forever. Returns the new state, or None if the job moved meanwhile."""
    error = f"worker lost: lease expired at {job.lease_expires_at.isoformat()} (worker {job.worker or '?'})"
    errors = (list(job.errors or []) + [_error_entry(job, error, "", now)])[-MAX_ERRORS_KEPT:]
    if job.attempts - 1 >= job.max_retries:
        state, changes = JobState.DEAD, {"finished_at": now, "live_key": None}
    else:
        state, changes = JobState.RETRY, {"run_at": now}
    updated = _running(job).filter(lease_expires_at__lt=now).update(
        state=state, last_error=error, errors=errors, lease_expires_at=None, **changes)
    if not updated:
        return None
    job.state = state
    log_job_event("lease_expired", job, level=logging.ERROR if state == JobState.DEAD else logging.WARNING,
                  worker=job.worker, new_state=state)
    return state


def jobs_release_workers(workers: list[str]) -> int:
    """Jobs running on worker processes that were just killed at shutdown: back to retry at
    once, the interrupted attempt not counted (it was the shutdown, not the job)."""
    if not workers:
        return 0
    return Job.objects.filter(state=JobState.ACTIVE, worker__in=workers).update(
        state=JobState.RETRY, run_at=timezone.now(), attempts=F("attempts") - 1, lease_expires_at=None,
        last_error="interrupted by shutdown; will run again")
