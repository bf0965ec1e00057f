"""The periodic table and the periodic tasks.

Each entry is a django-q2 Schedule row, kept by its fixed name. The engine's dispatcher
fires due rows every 0.2 s (jobs/dispatcher.py: fire_schedules) as ledger jobs on the
stated queue, so a slot is fired once, on time, and its job gets retries like any other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django_q.models import Schedule
from django_q.utils import localtime

from jobs.models import Heartbeat, Job, JobState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    name: str
    func: str
    cron: str  # croniter syntax in TIME_ZONE; a sixth field is seconds
    queue: str
    description: str


PERIODIC_TABLE = [
    Periodic("news_publish_sweep", "jobs.cron.news_publish_sweep", "* * * * *", "news",
             "every minute: publish due scheduled news that has no live job"),
    Periodic("news_archive_sweep", "jobs.cron.news_archive_sweep", "0 * * * *", "news",
             "every hour: archive expired news"),
    Periodic("analytics_batch", "jobs.cron.analytics_enqueue_batch", "*/5 * * * *", "analytics",
             "every 5 minutes: enqueue the analytics batch job"),
    Periodic("health_check", "jobs.cron.health_check", "* * * * * */30", "critical",
             "every 30 seconds: MySQL, Redis and every queue; writes the health heartbeat"),
    Periodic("cleanup", "jobs.cron.cleanup", "0 2 * * *", "default",
             "daily at 02:00: delete old finished jobs, django-q2 task rows and raw analytics"),
]

SWEEP_BATCH = 500
DELETE_BATCH = 1000
DELETE_MAX_BATCHES = 500


def sync_periodic_table(*, reset: bool = False) -> list[str]:
    """Create missing rows by name and remove duplicates. An existing row's timing is kept,
    so a change an admin made in the django-q2 admin survives restarts; its func and queue
    are put back to the code's. With reset=True the timing is put back too.
    Returns what changed, for the log."""
    changes = []
    # One syncing process at a time: several qclusters may start together. The lock row is
    # created in a transaction of its own: creating it inside the locking one deadlocked
    # when they did so on a new database (each waiter holds a shared lock on the duplicate
    # key, then asks for an exclusive one).
    Heartbeat.objects.get_or_create(name="lock:periodic-sync",
                                    defaults={"kind": "lock", "seen_at": timezone.now()})
    with transaction.atomic():
        Heartbeat.objects.select_for_update().get(name="lock:periodic-sync")
        for entry in PERIODIC_TABLE:
            rows = list(Schedule.objects.filter(name=entry.name).order_by("pk"))
            for extra in rows[1:]:
                extra.delete()
                changes.append(f"{entry.name}: removed duplicate row {extra.pk}")
            if not rows:
                Schedule.objects.create(
                    name=entry.name, func=entry.func, schedule_type=Schedule.CRON, cron=entry.cron,
                    cluster=entry.queue, repeats=-1, next_run=first_slot(entry.cron))
                changes.append(f"{entry.name}: created ({entry.cron} on {entry.queue})")
                continue
            row = rows[0]
            fields = {"func": entry.func, "cluster": entry.queue}
            if reset:
                fields.update(schedule_type=Schedule.CRON, cron=entry.cron, repeats=-1,
                              next_run=first_slot(entry.cron))
            stale = {k: v for k, v in fields.items() if getattr(row, k) != v}
            if stale:
                Schedule.objects.filter(pk=row.pk).update(**stale)
                changes.append(f"{entry.name}: updated {', '.join(sorted(stale))}")
    for line in changes:
        logger.info("periodic table: %s", line)
    return changes


def first_slot(cron: str, now: datetime | None = None) -> datetime:
    return croniter(cron, localtime(now or timezone.now())).get_next(datetime)


# ---------------------------------------------------------------- periodic tasks


def news_publish_sweep(limit: int = SWEEP_BATCH) -> str:
    """Due scheduled news with no live publishing job (missed by signals, e.g. after
    QuerySet.update()) gets one now."""
    from jobs.scheduler import schedule_news_publishing
    from jobs.types import NEWS_SCHEDULED_PUBLISHER
    from news.models import News, NewsStatus

    now = timezone.now()
    # Excluded in the query, not after the LIMIT: a backlog of due items whose jobs wait in
    # a busy queue must not hide the ones that have none.
    live_job = Job.objects.filter(news_id=OuterRef("pk"), job_type=NEWS_SCHEDULED_PUBLISHER,
                                  live_key__isnull=False)
    orphans = list(News.objects.filter(status=NewsStatus.SCHEDULED, scheduled_at__lte=now)
                   .exclude(Exists(live_job))
                   .order_by("scheduled_at").values_list("pk", "scheduled_at")[:limit])
    for pk, at in orphans:
        schedule_news_publishing(pk, at)
    if orphans:
        logger.warning("publish sweep: %d due item(s) had no live job: %s", len(orphans),
                       [pk for pk, _ in orphans[:50]])
    return f"{len(orphans)} enqueued"


def news_archive_sweep(limit: int = SWEEP_BATCH) -> str:
    from news.models import News, NewsStatus
    from news.services import news_archive_expired

    now = timezone.now()
    ids = list(News.objects.filter(status=NewsStatus.PUBLISHED, expires_at__lte=now)
               .order_by("expires_at").values_list("pk", flat=True)[:limit])
    archived = sum(1 for pk in ids if news_archive_expired(news_id=pk, now=now)[0])
    return f"{archived} archived"


def analytics_enqueue_batch() -> str:
    from jobs import types
    from jobs.scheduler import enqueue

    job_id = enqueue(types.NEWS_ANALYTICS, {"reason": "periodic"}, unique_key="news:analytics:periodic")
    return f"job {job_id}"


def queue_health(now: datetime | None = None) -> dict[str, dict]:
    """Per queue: ledger counts by state, Redis depth, oldest pending age, live workers."""
    from jobs import broker
    from jobs.liveness import live_clusters
    from jobs.monitoring import ledger_counts, oldest_pending
    from jobs.types import QUEUES

    now = now or timezone.now()
    counts = ledger_counts()
    ages = oldest_pending(now)
    clusters = live_clusters()
    out = {}
    for q in QUEUES:
        alive = [c for c in clusters if c.get("queue") == q]
        out[q] = {
            **{s: counts[q][s] for s in ("scheduled", "pending", "active", "retry", "dead")},
            "depth": broker.queue_depth(q),
            "oldest_pending_age_s": ages[q],
            "clusters": len(alive),
            "workers_alive": sum(c.get("workers_alive", 0) for c in alive),
        }
    return out


def health_check() -> str:
    """Check MySQL, Redis and every queue; record the result as the `health` heartbeat
    that /readyz and monitoring read; log a warning for each threshold crossed."""
    from nextevent.redis import get_redis

    started = time.monotonic()
    problems = []
    details: dict = {"ok": True}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        details["database"] = "ok"
    except Exception as exc:
        details["database"] = f"error: {exc}"
        problems.append(f"database: {exc}")
    try:
        get_redis().ping()
        details["redis"] = "ok"
    except Exception as exc:
        details["redis"] = f"error: {exc}"
        problems.append(f"redis: {exc}")
    if not problems:
        details["queues"] = queues = queue_health()
        for name, q in queues.items():
            if q["oldest_pending_age_s"] > settings.JOBS_ALERT_PENDING_AGE:
                problems.append(f"queue {name}: oldest pending job is {q['oldest_pending_age_s']:.0f} s old")
            if q["dead"] > settings.JOBS_ALERT_DEAD_JOBS:
                problems.append(f"queue {name}: {q['dead']} dead job(s)")
            if q["clusters"] == 0:
                problems.append(f"queue {name}: no live cluster")
    details["ok"] = not problems
    details["problems"] = problems
    details["took_ms"] = int((time.monotonic() - started) * 1000)
    Heartbeat.objects.update_or_create(name="health", defaults={"kind": "health", "seen_at": timezone.now(),
                                                                "details": details})
    for problem in problems:
        logger.warning("health check: %s", problem)
    _after_health_check(details)
    return "ok" if not problems else "; ".join(problems)


# Monitoring (alerts) registers here to act on each health result.
_health_hooks: list = []


def on_health_checked(func):
    _health_hooks.append(func)
    return func


def _after_health_check(details: dict) -> None:
    for hook in _health_hooks:
        try:
            hook(details)
        except Exception:
            logger.exception("health hook %s failed", getattr(hook, "__name__", hook))


def delete_in_batches(queryset, *, batch: int = DELETE_BATCH, max_batches: int = DELETE_MAX_BATCHES) -> int:
    """Delete by primary key in small batches, each its own short transaction, so no long
    lock is held on a large table. Bounded by max_batches per run; the next run goes on."""
    total = 0
    for _ in range(max_batches):
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch])
        if not ids:
            break
        # The filter again: a row that changed since the SELECT (a dead job retried from
        # the admin meanwhile) no longer qualifies and must stay.
        deleted, _ = queryset.filter(pk__in=ids).delete()
        total += deleted
        if len(ids) < batch:
            break
        time.sleep(0.01)  # let other writers in between batches
    return total


def cleanup(now: datetime | None = None) -> str:
    from django_q.models import Task

    now = now or timezone.now()
    done_cutoff = now - timedelta(days=settings.JOBS_RETENTION_COMPLETED_DAYS)
    dead_cutoff = now - timedelta(days=settings.JOBS_RETENTION_DEAD_DAYS)
    results = {
        "completed": delete_in_batches(Job.objects.filter(
            state__in=[JobState.COMPLETED, JobState.CANCELLED], finished_at__lt=done_cutoff)),
        "dead": delete_in_batches(Job.objects.filter(state=JobState.DEAD, finished_at__lt=dead_cutoff)),
        "django_q_tasks": delete_in_batches(Task.objects.filter(stopped__lt=dead_cutoff)),
    }
    try:
        from analytics.services import analytics_cleanup
    except ImportError:
        analytics_cleanup = None
    if analytics_cleanup:
        results["analytics_raw"] = analytics_cleanup(now=now)
    logger.info("cleanup: %s", results)
    return ", ".join(f"{k}={v}" for k, v in results.items())
