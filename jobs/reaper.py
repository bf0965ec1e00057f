"""Re-run at once the jobs whose lease holder died on this host.

The lease tells other hosts that a worker is gone only when it runs out (JOBS_LEASE_SECONDS);
the worker's own host can tell at once: its holder id is "host:start:pid" and /proc says
whether that process still exists with that start time. Each qcluster supervisor runs
`reap_dead_local_holders` every JOBS_HOLDER_CHECK_INTERVAL seconds for its host; the lost
attempt counts, as when a lease expires (services.job_lease_expired), so a job that kills
its worker is not retried forever.
"""

from __future__ import annotations

import logging
import socket
import threading

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from jobs import proctree, services
from jobs.models import Job, JobState

logger = logging.getLogger(__name__)

REAP_BATCH = 200


def reap_dead_local_holders(host: str | None = None, *, limit: int = REAP_BATCH) -> int:
    """Active jobs held by a process of `host` (default: this host) that no longer exists:
    retry now (or dead when out of retries). Returns how many were moved."""
    host = host or socket.gethostname()
    # Active jobs are few (at most one per worker); the (state, lease) index serves this.
    rows = list(Job.objects.filter(state=JobState.ACTIVE, worker__startswith=f"{host}:")[:limit])
    count = 0
    now = timezone.now()
    for job in rows:
        if proctree.holder_alive(job.worker, host) is False:
            if services.job_lease_expired(job, now=now, holder_gone=True):
                count += 1
    if count:
        logger.warning("re-ran %d job(s) whose worker process died on %s", count, host)
    return count


def run_reaper(stop: threading.Event, host: str | None = None) -> None:
    """The supervisor's reaper thread: bounded work per pass, errors logged and survived."""
    errors = 0
    while not stop.wait(settings.JOBS_HOLDER_CHECK_INTERVAL):
        try:
            reap_dead_local_holders(host)
            errors = 0
        except Exception:
            errors += 1
            if errors <= 3 or errors % 120 == 0:
                logger.exception("local lease reaper pass failed (%d in a row)", errors)
            close_old_connections()
