"""The periodic table: one django-q2 Schedule row per declared periodic task, kept by its
name. The tasks themselves are declared in their apps with @jobs.registry.periodic; the
dispatcher fires due rows at their next_run (jobs/dispatcher.py: fire_schedules) as
`system:periodic` ledger jobs, so a slot is fired once, on time, with retries."""

from __future__ import annotations

import logging
from datetime import datetime

from croniter import croniter
from django.db import transaction
from django.utils import timezone
from django_q.models import Schedule
from django_q.utils import localtime

from jobs.models import Heartbeat
from jobs.registry import periodic_table

logger = logging.getLogger(__name__)


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
        for entry in periodic_table():
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
