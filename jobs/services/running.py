"""Running jobs: the state machine of an attempt. Every transition is a conditional UPDATE
on the row's current state and, for a running job, its claim number (`claims`, +1 on every
claim and never reset), which fences off a worker whose lease was taken over, so two
processes can never both move a job."""

from __future__ import annotations

import functools
import json
import logging
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import OperationalError, connection, models
from django.db.models import F
from django.utils import timezone

from jobs.events import log_job_event
from jobs.proctree import holder_id
from jobs.models import Job, JobState

logger = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 20
MAX_TRACEBACK_CHARS = 8000
# A job's `result` text. Tasks store their JSON return value there (jobs/tasks_backend.py
# refuses a larger one rather than cut it); 16,000 characters of utf8mb4 fit a TEXT column.
MAX_RESULT_CHARS = 16000


def backoff_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): 1, 2, 4, 8, 16, 16..."""
    return min(settings.JOBS_BACKOFF_BASE * (2 ** max(attempt - 1, 0)), settings.JOBS_BACKOFF_CAP)


def retry_delay(job: Job, error: BaseException | None) -> float:
    """The wait before the next attempt of `job` after `error`: its type's retry_delay hook
    (a vendor's Retry-After), else its type's curve, else the engine's. A hook that fails or
    answers nonsense falls back to the curve: a broken policy must not lose the retry."""
    from jobs.registry import MAX_RETRY_SECONDS, get_job_type

    try:
        policy = get_job_type(job.job_type).retry
    except Exception:  # an unknown type goes dead anyway; the engine's curve for the record
        policy = None
    if policy is None:
        return backoff_delay(job.attempts)
    if policy.delay is not None and error is not None:
        try:
            seconds = policy.delay(job, error)
            if seconds is not None:
                seconds = float(seconds)
                if 0 <= seconds <= MAX_RETRY_SECONDS:
                    return seconds
                logger.warning("job %s: retry_delay answered %r s, outside 0 to %s; using the curve",
                               job.pk, seconds, MAX_RETRY_SECONDS)
        except Exception:
            logger.exception("job %s: retry_delay hook failed; using the curve", job.pk)
    return policy.curve(job.attempts)


def worker_id() -> str:
    """The lease holder's id, "host:start:pid": its start time tells a reused pid apart
    (see jobs/proctree.py), so its own host can see at once that it is gone."""
    return holder_id()


def _execute(sql: str, params: list) -> int:
    """Raw UPDATE on the hot path (claim, complete): the ORM's query building costs as much
    as the round trip itself for a no-op job. Returns the row count."""
    with connection.cursor() as cursor:
        cursor.execute(sql.format(table=Job._meta.db_table), params)
        return cursor.rowcount


# MySQL client errors that mean the connection itself is gone: 2006 (server has gone away),
# 2013 (lost during a query: a read that timed out on a connection whose server vanished),
# 2055 (lost at a system call).
LOST_CONNECTION_ERRORS = frozenset({2006, 2013, 2055})


def connection_lost(exc: BaseException) -> bool:
    """Django's wrapped error or the driver's own (a call on the raw connection, unwrapped)."""
    kinds = (OperationalError, getattr(connection.Database, "OperationalError", OperationalError))
    return isinstance(exc, kinds) and bool(exc.args) and exc.args[0] in LOST_CONNECTION_ERRORS


def _dt(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


def job_claim(job_id: int, *, worker: str, completing: list[Completion] = ()) -> Job | None:
    """pending -> active for one worker. None if another worker has it or it is no longer
    pending (a duplicate or stale wake-up). `completing`: this worker's finished jobs whose
    completion was deferred (jobs/services/completing.py), written in the claim's own
    transaction, so a busy worker commits once per job instead of twice.

    Priority (on MariaDB): a wake-up is a token for its job's queue. It claims its own job,
    unless a pending job of the same queue has a higher priority (then the best of those:
    priority first, then run_at, then id), or its own job is no longer pending (then the best
    pending job of the queue, so that a wake-up another claim overtook is not wasted). The
    job the claim returns may therefore not be `job_id`; the count of claims still matches the
    count of wake-ups, and a pending job left without one is re-pushed (dispatcher.repush_lost).
    See _PRIORITY_TARGET."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.JOBS_LEASE_SECONDS)
    claim_sql = ("UPDATE {table} SET state=%s, attempts=attempts+1, claims=claims+1, started_at=%s, "
                 "lease_expires_at=%s, worker=%s "
                 "WHERE id=%s AND state=%s")
    claim_params = [JobState.ACTIVE.value, _dt(now), _dt(lease), worker, job_id, JobState.PENDING.value]
    completing = list(completing)
    if completing and not (connection.vendor == "mysql" and connection.get_autocommit()):
        for done in completing:  # SQLite, or inside a caller's transaction (no BEGIN of our own there)
            write_completion(done)
        completing = []
    if connection.vendor == "mysql":
        table = Job._meta.db_table
        # The target first, into a session variable: an UPDATE whose WHERE holds the subquery
        # scans the whole table (seen: 10,002 rows read for 10,000 pending), while
        # `id=@variable` is a primary-key look-up.
        claim_sql = (f"SET @jobs_claim_target = {_PRIORITY_TARGET.replace('{target}', table)}; "
                     + claim_sql.replace("WHERE id=%s AND state=%s", "WHERE id=@jobs_claim_target AND state=%s"))
        claim_params = [job_id, JobState.PENDING.value, job_id] + claim_params[:4] + claim_params[5:]
        try:
            return _claim_and_read(claim_sql, claim_params, job_id, worker, now, completing)
        except Exception as exc:
            if not connection_lost(exc):
                raise
            # The connection died under the packet (its server vanished and the read timed
            # out, or it restarted): whether the packet took effect is unknown. The same packet
            # again on a fresh connection is right either way: if the first claim committed, the
            # UPDATE now matches nothing and the SELECT, fenced by what that claim wrote (this
            # worker, this started_at), still returns the row; the deferred completions are
            # fenced by their claim numbers and cannot be written twice.
            logger.warning("job %s: claim lost its database connection (%s); trying once more on a new one",
                           job_id, exc)
            connection.close()
            # With priorities the packet may pick another job the second time: if the first
            # one committed, its row is the claim (fenced by this worker and started_at).
            claimed = _read_claimed(worker, now)
            if claimed is not None:
                return claimed
            return _claim_and_read(claim_sql, claim_params, job_id, worker, now, completing)
    if not _execute(claim_sql, claim_params):
        return None
    return fetch_job(job_id)


# The job a wake-up for job %s claims (see job_claim), set into @jobs_claim_target before
# the claim UPDATE in the same packet: the best pending job of its queue
# that outranks it (any pending one if it is no longer pending), else itself. One probe of
# job_priority_idx (queue, state, priority DESC, run_at, id) that stops at the first row: with
# every job at priority 0 and its own job pending, `priority > 0` finds nothing at once (two
# index reads, measured). Two workers may pick the same job: one UPDATE wins, the other
# matches nothing and its wake-up is spent; repush_lost covers the job left without one.
_PRIORITY_TARGET = (
    "COALESCE((SELECT c.id FROM {target} c JOIN {target} w ON w.id=%s "
    "WHERE c.queue=w.queue AND c.state=%s "
    "AND c.priority > IF(w.state='pending', w.priority, -32768) "
    "ORDER BY c.priority DESC, c.run_at, c.id LIMIT 1), %s)")


def _read_claimed(worker: str, now: datetime) -> Job | None:
    table = Job._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_columns()} FROM {table} WHERE state=%s AND worker=%s AND started_at=%s",
                       [JobState.ACTIVE.value, worker, _dt(now)])
        row = cursor.fetchone()
    return None if row is None else _job_from_row(row)


# MYSQL_OPTION_MULTI_STATEMENTS_ON for mysql_set_server_option(): this connection (only) may
# send several statements in one round trip. Parameters are still escaped by the driver.
_MULTI_STATEMENTS_ON = 0


def _claim_and_read(claim_sql: str, claim_params: list, job_id: int, worker: str, now: datetime,
                    completing: list[Completion]) -> Job | None:
    """The claim UPDATE and the read of the claimed row in one round trip (MariaDB 10.11 has
    no UPDATE ... RETURNING): two statements in one packet. The SELECT is fenced by what this
    claim wrote (active, this worker, this started_at to the microsecond), so it returns the
    row only if this UPDATE took it: a wake-up another worker won, or one for a job that is no
    longer pending, reads nothing. Deferred completions go first in the same packet, all in
    one transaction (one commit). If that transaction fails (a deadlock, say), it is rolled
    back and each completion is written on its own before the plain claim."""
    connection.ensure_connection()
    raw = connection.connection
    if not getattr(raw, "_jobs_multi_statements", False):
        raw.set_server_option(_MULTI_STATEMENTS_ON)  # once per connection
        raw._jobs_multi_statements = True
    table = Job._meta.db_table
    # Fenced by what this claim wrote. The claim may take another job than job_id: on MariaDB
    # the one in @jobs_claim_target (a primary-key read; without it MariaDB may scan every
    # active row), elsewhere job_id.
    target = "@jobs_claim_target" if "@jobs_claim_target" in claim_sql else "%s"
    read_sql = (f"SELECT {_columns()} FROM {table} "
                f"WHERE id={target} AND state=%s AND worker=%s AND started_at=%s")
    statements, params = [], []
    for done in completing:
        sql, values = _completion_statement(done)
        statements.append(sql)
        params += values
    statements += [claim_sql.format(table=table), read_sql]
    params += claim_params + ([] if target != "%s" else [job_id]) + [JobState.ACTIVE.value, worker, _dt(now)]
    if completing:
        statements = ["BEGIN"] + statements + ["COMMIT"]
    with connection.cursor() as cursor:
        try:
            cursor.execute("; ".join(statements), params)
            written = []
            if completing:
                cursor.nextset()  # past BEGIN
                for _ in completing:
                    written.append(cursor.rowcount)
                    cursor.nextset()
            for _ in range(claim_sql.count("; ")):
                cursor.nextset()  # past the statements before the claim UPDATE (the priority target)
            cursor.nextset()  # past the claim UPDATE's result to the SELECT's
            row = cursor.fetchone()
            while cursor.nextset():  # nothing must be left unread on the connection
                pass
        except Exception:
            if not completing:
                raise
            # The transaction is undone as a whole (InnoDB has rolled a deadlock back already);
            # a ROLLBACK that fails too means the connection is gone: the caller keeps the
            # completions for the next try.
            cursor.execute("ROLLBACK")
            logger.warning("claim of job %s with %s completions failed; writing them one by one",
                           job_id, len(completing), exc_info=True)
            for done in completing:
                try:
                    write_completion(done)
                except Exception:  # one bad completion must not stop this worker claiming
                    logger.exception("job %s attempt %s: completion not recorded; it runs again when its "
                                     "lease runs out", done.job.pk, done.job.attempts)
            return _claim_and_read(claim_sql, claim_params, job_id, worker, now, [])
    for done, count in zip(completing, written):
        _log_completion(done, count)
    return None if row is None else _job_from_row(row)


@functools.cache
def _columns() -> str:
    return ", ".join(connection.ops.quote_name(f.column) for f in Job._meta.concrete_fields)


def fetch_job(job_id: int) -> Job:
    """The whole row as the ORM would read it (tested field by field). Job.objects.get() costs four times the round trip itself on this hot path; on MySQL
    read the row with a plain cursor and convert the two kinds of column that need it."""
    if connection.vendor != "mysql":
        return Job.objects.get(pk=job_id)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_columns()} FROM {Job._meta.db_table} WHERE id = %s", [job_id])
        row = cursor.fetchone()
    if row is None:
        raise Job.DoesNotExist(f"job {job_id} does not exist")
    return _job_from_row(row)


@functools.cache
def _row_kinds() -> tuple[tuple[str, bool, bool], ...]:
    return tuple((f.attname, isinstance(f, models.DateTimeField), isinstance(f, models.JSONField))
                 for f in Job._meta.concrete_fields)


def _job_from_row(row) -> Job:
    values = []
    for (_, is_datetime, is_json), value in zip(_row_kinds(), row):
        if value is not None:
            if is_datetime:
                value = value.replace(tzinfo=dt_timezone.utc)  # stored in UTC (USE_TZ)
            elif is_json and isinstance(value, (str, bytes)):
                value = json.loads(value)
        values.append(value)
    return Job.from_db(connection.alias, [attname for attname, _, _ in _row_kinds()], values)


def job_renew_lease(job_id: int, claim: int) -> bool:
    return bool(Job.objects.filter(pk=job_id, state=JobState.ACTIVE, claims=claim).update(
        lease_expires_at=timezone.now() + timedelta(seconds=settings.JOBS_LEASE_SECONDS)))


def _running(job: Job):
    return Job.objects.filter(pk=job.pk, state=JobState.ACTIVE, claims=job.claims)


@dataclass(frozen=True)
class Completion:
    """A finished attempt to record: the job as claimed (its id and claim number fence the write)."""

    job: Job
    finished_at: datetime
    result: str


def _completion_statement(done: Completion) -> tuple[str, list]:
    return ("UPDATE {table} SET state=%s, finished_at=%s, lease_expires_at=NULL, live_key=NULL, "
            "waiting_reason='', result=%s WHERE id=%s AND state=%s AND claims=%s").format(
        table=Job._meta.db_table), [
        JobState.COMPLETED.value, _dt(done.finished_at), (done.result or "")[:MAX_RESULT_CHARS], done.job.pk,
        JobState.ACTIVE.value, done.job.claims]


def _log_completion(done: Completion, written: int) -> None:
    if written:
        log_job_event("completed", done.job, duration_ms=_ms(done.job.started_at, done.finished_at))
    else:
        logger.warning("job %s attempt %s finished after losing its lease (or was recorded already); "
                       "result not recorded", done.job.pk, done.job.attempts)


def write_completion(done: Completion) -> bool:
    """active -> completed, fenced by the claim: False if the job moved meanwhile (its lease
    was taken over), and then nothing is written."""
    sql, params = _completion_statement(done)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        written = cursor.rowcount
    _log_completion(done, written)
    return bool(written)


def job_complete(job: Job, *, result: str = "") -> bool:
    return write_completion(Completion(job, timezone.now(), result))


def _error_entry(job: Job, message: str, tb: str, now: datetime, exception_class: str) -> dict:
    # exception_class (dotted path) lets the Tasks API rebuild a TaskError from the ledger.
    return {"attempt": job.attempts, "at": now.isoformat(), "worker": job.worker,
            "error": message[:2000], "traceback": tb[-MAX_TRACEBACK_CHARS:],
            "exception_class": exception_class[:255]}


CANCELLED_RESULT = "cancelled"


def end_if_cancel_requested(running, *, now: datetime, note: str = "") -> int:
    """active -> cancelled for the rows of `running` (a fenced queryset) that someone asked
    to cancel: a cancelled job is never retried, whatever ended its attempt (an error, a
    timeout, its worker's death, a snooze, shutdown). Frees its unique key. Returns the count."""
    return running.filter(cancel_requested_at__isnull=False).update(
        state=JobState.CANCELLED, finished_at=now, cancelled_at=now, lease_expires_at=None, live_key=None,
        waiting_reason="", result=(f"{CANCELLED_RESULT}: {note}" if note else CANCELLED_RESULT)[:MAX_RESULT_CHARS])


def _record_failure(job: Job, running, *, error: str, tb: str, now: datetime, permanent: bool,
                    retry_in: float, exception_class: str = "") -> str | None:
    """The one place a failed attempt is written: its error kept with the others, then
    retry after `retry_in` seconds, or dead when permanent or out of retries. `running`
    is the conditional queryset that fences the attempt. None if the job moved meanwhile.
    A job someone asked to cancel ends cancelled instead."""
    if end_if_cancel_requested(running, now=now, note=f"its attempt ended with {error[:200]}"):
        job.state = JobState.CANCELLED
        log_job_event("cancelled", job, reason="cancel requested; attempt ended", error=error[:500])
        return JobState.CANCELLED
    errors = (list(job.errors or []) + [_error_entry(job, error, tb, now, exception_class)])[-MAX_ERRORS_KEPT:]
    if permanent or job.attempts - 1 >= job.max_retries:
        state, changes = JobState.DEAD, {"finished_at": now, "live_key": None}
    else:
        state, changes = JobState.RETRY, {"run_at": now + timedelta(seconds=retry_in)}
    updated = running.update(state=state, last_error=f"{error}\n\n{tb}".strip()[:MAX_TRACEBACK_CHARS],
                             errors=errors, lease_expires_at=None, waiting_reason="", **changes)
    if not updated:
        return None
    job.state = state
    return state


def job_fail(job: Job, *, error: str, tb: str = "", permanent: bool = False, exception_class: str = "",
             error_object: BaseException | None = None) -> str:
    """Record a failed attempt: retry after its type's retry delay (given `error_object`, the
    exception, for a retry_delay hook), or dead when permanent or out of retries, or
    cancelled when someone asked. Returns the new state."""
    now = timezone.now()
    retry_in = 0.0 if permanent else retry_delay(job, error_object)
    state = _record_failure(job, _running(job), error=error, tb=tb, now=now, permanent=permanent,
                            retry_in=retry_in, exception_class=exception_class)
    if state is None:
        logger.warning("job %s attempt %s failed after losing its lease: %s", job.pk, job.attempts, error)
        return job.state
    if state == JobState.CANCELLED:
        return state
    if state == JobState.DEAD:
        log_job_event("dead", job, level=logging.ERROR, error=error[:500], permanent=permanent,
                      duration_ms=_ms(job.started_at, now))
    else:
        log_job_event("retried", job, level=logging.WARNING, error=error[:500], retry_in_s=round(retry_in, 3))
    return state


# States a job waits in before it starts an attempt; a deadline ends them `expired`. A
# retry waiting for its backoff expires too: the deadline is for the work, not one attempt.
EXPIRABLE_STATES = (JobState.SCHEDULED, JobState.PENDING, JobState.RETRY)


def jobs_expire_overdue(*, now: datetime, limit: int) -> list[int]:
    """Jobs not started by their deadline -> expired (never run), unique keys freed. Bounded
    by `limit`; rows are taken with SKIP LOCKED so several dispatchers share the work.
    Returns the ids moved."""
    from django.db import transaction

    with transaction.atomic():
        ids = list(Job.objects.select_for_update(skip_locked=True)
                   .filter(state__in=EXPIRABLE_STATES, expires_at__lt=now)
                   .order_by("expires_at").values_list("pk", flat=True)[:limit])
        if not ids:
            return []
        Job.objects.filter(pk__in=ids, state__in=EXPIRABLE_STATES, expires_at__lt=now).update(
            state=JobState.EXPIRED, finished_at=now, live_key=None, lease_expires_at=None, waiting_reason="",
            result="expired: not started by its deadline")
    for job_id in ids[:100]:
        logger.warning("job %s expired: not started by its deadline", job_id)
    return ids


def job_expire_claimed(job: Job) -> bool:
    """A worker claimed a job past its deadline (its wake-up waited in a long queue): expired,
    never run, the attempt not counted. Fenced by the claim."""
    now = timezone.now()
    done = _running(job).update(state=JobState.EXPIRED, finished_at=now, attempts=F("attempts") - 1, live_key=None,
                                lease_expires_at=None, waiting_reason="",
                                result="expired: not started by its deadline")
    if done:
        log_job_event("expired", job, level=logging.WARNING, expires_at=job.expires_at.isoformat())
    return bool(done)


def job_snooze(job: Job, *, until: datetime, reason: str) -> bool:
    """Put a running job back to wait until `until` without spending a retry. The reason is
    not an error: it goes to waiting_reason, and last_error keeps only real errors."""
    if end_if_cancel_requested(_running(job), now=timezone.now(), note="snoozed"):
        log_job_event("cancelled", job, reason="cancel requested; snoozed")
        return True
    done = _running(job).update(state=JobState.SCHEDULED, run_at=until, attempts=F("attempts") - 1,
                                lease_expires_at=None, waiting_reason=reason[:2000])
    if done:
        log_job_event("snoozed", job, until=until.isoformat(), reason=reason)
    return bool(done)


def job_put_back(job: Job, *, reason: str) -> bool:
    """A worker picked up a job it must not run now (queue paused): back to scheduled,
    attempt not counted."""
    if end_if_cancel_requested(_running(job), now=timezone.now(), note="put back"):
        log_job_event("cancelled", job, reason="cancel requested; put back")
        return True
    done = _running(job).update(state=JobState.SCHEDULED, run_at=timezone.now(),
                                attempts=F("attempts") - 1, lease_expires_at=None)
    if done:
        log_job_event("put_back", job, reason=reason)
    return bool(done)


def _ms(start: datetime | None, end: datetime) -> int | None:
    return None if start is None else int((end - start).total_seconds() * 1000)


def exception_path(exc: BaseException) -> str:
    """The dotted path of an exception's class, as the Tasks API's TaskError names it."""
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def format_exception(exc: BaseException) -> tuple[str, str]:
    return f"{type(exc).__name__}: {exc}", "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))


def job_lease_expired(job: Job, *, now: datetime, holder_gone: bool = False) -> str | None:
    """The worker holding `job` stopped renewing its lease (killed, host lost), or, with
    holder_gone, its own host saw the holder process gone (jobs/reaper.py). Run it again
    at once, counting the lost attempt so a job that kills its worker is not retried
    forever. Returns the new state, or None if the job moved meanwhile."""
    if holder_gone:
        error = f"worker lost: process {job.worker} is gone"
        running = _running(job).filter(worker=job.worker)
    else:
        error = f"worker lost: lease expired at {job.lease_expires_at.isoformat()} (worker {job.worker or '?'})"
        running = _running(job).filter(lease_expires_at__lt=now)
    state = _record_failure(job, running, error=error, tb="", now=now,
                            permanent=False, retry_in=0, exception_class="jobs.errors.WorkerLost")
    if state is not None:
        log_job_event("lease_expired", job, level=logging.ERROR if state == JobState.DEAD else logging.WARNING,
                      worker=job.worker, new_state=state)
    return state


def jobs_release_workers(workers: list[str]) -> int:
    """Jobs running on worker processes that were just killed at shutdown: back to retry at
    once, the interrupted attempt not counted (it was the shutdown, not the job)."""
    if not workers:
        return 0
    running = Job.objects.filter(state=JobState.ACTIVE, worker__in=workers)
    cancelled = end_if_cancel_requested(running, now=timezone.now(), note="interrupted by shutdown")
    return cancelled + running.update(
        state=JobState.RETRY, run_at=timezone.now(), attempts=F("attempts") - 1, lease_expires_at=None,
        last_error="interrupted by shutdown; will run again")
