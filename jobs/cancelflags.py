"""What a worker process's lease keeper has seen: the attempts (job id, claim) someone
asked to cancel. Read by Job.cancel_requested() in the handler's thread, so a handler's
check costs no query: the keeper polls the ledger (jobs/worker.py). No imports, so the
model can use it."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_requested: set[tuple[int, int]] = set()


def mark(job_id: int, claim: int) -> None:
    with _lock:
        _requested.add((job_id, claim))


def seen(job_id: int, claim: int) -> bool:
    with _lock:
        return (job_id, claim) in _requested


def forget(job_id: int, claim: int) -> None:
    with _lock:
        _requested.discard((job_id, claim))
