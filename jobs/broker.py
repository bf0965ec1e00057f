"""Wake-ups to the queues' django-q2 clusters: "run job N", signed exactly as
django_q.tasks.async_task signs it, pushed in one pipelined round trip per batch.

A wake-up may be lost (Redis flushed, a cluster killed with prefetched tasks); the
dispatcher re-pushes pending jobs whose wake-up has not been taken (see dispatcher.py)."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable

from django.utils import timezone

from nextevent.redis import get_redis, queue_key

logger = logging.getLogger(__name__)

RUN_JOB = "jobs.worker.run_job"
# django-q2's worker raises its TimeoutException at `timeout`; the engine adds no slack so
# a job's stated timeout is what it gets.


def _package(job_id: int, queue: str, timeout: int) -> str:
    from django_q.signing import SignedPackage

    return SignedPackage.dumps({
        "id": uuid.uuid4().hex,
        "name": f"job-{job_id}",
        "func": RUN_JOB,
        "args": (job_id,),
        "kwargs": {},
        "cluster": queue,
        "timeout": int(timeout),
        "started": timezone.now(),
    })


def push(jobs: Iterable[tuple[int, str, int]]) -> int:
    """Push wake-ups for (job_id, queue, timeout) triples. Returns how many were pushed."""
    by_queue: dict[str, list[str]] = defaultdict(list)
    for job_id, queue, timeout in jobs:
        by_queue[queue].append(_package(job_id, queue, timeout))
    if not by_queue:
        return 0
    if len(by_queue) == 1:
        queue, packages = next(iter(by_queue.items()))
        get_redis().rpush(queue_key(queue), *packages)
        return len(packages)
    pipe = get_redis().pipeline(transaction=False)
    for queue, packages in by_queue.items():
        pipe.rpush(queue_key(queue), *packages)
    pipe.execute()
    return sum(len(p) for p in by_queue.values())


def queue_depth(queue: str) -> int:
    return int(get_redis().llen(queue_key(queue)))
