"""The daily cleanup: finished jobs past their retention and django-q2's task rows. Apps
with data of their own to prune connect to `cleanup_requested` (analytics deletes its raw
events that way) instead of the engine importing them."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.dispatch import Signal
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.registry import periodic

logger = logging.getLogger(__name__)

DELETE_BATCH = 1000
DELETE_MAX_BATCHES = 500

# Sent by cleanup() with `now`; a receiver returns how many rows it deleted. Its sender's
# label (the receiver's result key) is the receiver's `cleanup_label` attribute or its name.
cleanup_requested = Signal()


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


@periodic("cleanup", cron="0 2 * * *", queue="default",
          description="daily at 02:00: delete old finished jobs, django-q2 task rows and apps' old data")
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
    for receiver, deleted in cleanup_requested.send_robust(sender=cleanup, now=now):
        label = getattr(receiver, "cleanup_label", getattr(receiver, "__name__", "app"))
        if isinstance(deleted, Exception):
            logger.error("cleanup step %s failed: %s", label, deleted)
            results[label] = "error"
        else:
            results[label] = deleted
    logger.info("cleanup: %s", results)
    return ", ".join(f"{k}={v}" for k, v in results.items())
