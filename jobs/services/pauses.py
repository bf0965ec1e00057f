"""Paused queues: the dispatcher does not forward their jobs and workers put back what they
pick up. Nothing is dropped; resuming lets them run."""

from __future__ import annotations

import time

from jobs.models import QueuePause
from jobs.queues import check_queue

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
    check_queue(queue)
    _, created = QueuePause.objects.get_or_create(queue=queue, defaults={"paused_by": by[:150]})
    _reset_pause_cache()
    return created


def queue_resume(queue: str) -> bool:
    check_queue(queue)
    deleted, _ = QueuePause.objects.filter(queue=queue).delete()
    _reset_pause_cache()
    return bool(deleted)


def _reset_pause_cache():
    global _pause_cache
    _pause_cache = (0.0, frozenset())
