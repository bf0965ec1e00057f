"""Is each queue making progress? Workers note their claims in Redis; the dispatcher re-pushes
wake-ups of a queue that has stopped claiming, the supervisor restarts a cluster of its own
that has (a "wedged" cluster: alive, its list holding wake-ups, claiming nothing), and
`jobs stats`, the dashboard and /readyz report both.

Keys (all expire, so a flush or a vanished cluster leaves nothing stale behind):
- nextevent:claims:<queue>  hash, field "<host>:<cluster pid>" -> unix time of its last claim
  (written at most every CLAIM_NOTE_EVERY s per worker process: one HSET, off the claim's
  critical path cost-wise);
- nextevent:wedged:<queue>:<host>:<pid> -> JSON of the last wedge the supervisor acted on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from django.conf import settings

from nextevent.redis import get_redis

logger = logging.getLogger(__name__)

CLAIMS_PREFIX = "nextevent:claims"
WEDGED_PREFIX = "nextevent:wedged"
CLAIM_NOTE_EVERY = 0.5
CLAIMS_TTL = 3600
WEDGED_REPORT_TTL = 600

# Set by jobs_cluster in the cluster's main process; inherited by its forked workers.
CLUSTER_ENV = "NEXTEVENT_CLUSTER_ID"

_last_note: dict[str, float] = {}


def cluster_id() -> str:
    return os.environ.get(CLUSTER_ENV) or f"{socket.gethostname()}:{os.getpid()}"


def note_claim(queue: str) -> None:
    """A worker of this process's cluster claimed a job of `queue`. Never raises: progress
    reporting must not fail a job."""
    now = time.time()
    if now - _last_note.get(queue, 0.0) < CLAIM_NOTE_EVERY:
        return
    _last_note[queue] = now
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.hset(f"{CLAIMS_PREFIX}:{queue}", cluster_id(), f"{now:.3f}")
        pipe.expire(f"{CLAIMS_PREFIX}:{queue}", CLAIMS_TTL)
        pipe.execute()
    except Exception:  # Redis away: the worst case is a needless re-push or restart
        logger.debug("could not note a claim on %s", queue, exc_info=True)


def last_claims(queue: str) -> dict[str, float]:
    raw = get_redis().hgetall(f"{CLAIMS_PREFIX}:{queue}")
    out = {}
    for k, v in raw.items():
        try:
            out[k.decode() if isinstance(k, bytes) else k] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def last_claim_at(queue: str, cluster: str | None = None) -> float | None:
    claims = last_claims(queue)
    if cluster is not None:
        return claims.get(cluster)
    return max(claims.values(), default=None)


def queue_stalled(queue: str, depth: int, *, now: float | None = None, after: float | None = None) -> bool:
    """Wake-ups are waiting and nobody has claimed a job of the queue for `after` seconds
    (JOBS_STALL_AFTER): whatever holds the list, the queue is not moving."""
    if depth <= 0:
        return False
    now = now or time.time()
    after = settings.JOBS_STALL_AFTER if after is None else after
    last = last_claim_at(queue)
    return last is None or now - last > after


def report_wedged(queue: str, host: str, pid: int, details: dict) -> None:
    try:
        get_redis().set(f"{WEDGED_PREFIX}:{queue}:{host}:{pid}",
                        json.dumps({"queue": queue, "host": host, "pid": pid, "at": time.time(), **details}),
                        ex=WEDGED_REPORT_TTL)
    except Exception:
        logger.warning("could not record the wedged %s cluster %s:%s in Redis", queue, host, pid)


def wedged_reports() -> list[dict]:
    """Wedged clusters the supervisors restarted in the last WEDGED_REPORT_TTL seconds."""
    client = get_redis()
    keys = list(client.scan_iter(match=f"{WEDGED_PREFIX}:*", count=200))[:1000]
    return [json.loads(v) for v in client.mget(keys) if v] if keys else []


def progress_state(depths: dict[str, int | None], *, now: float | None = None) -> dict[str, dict]:
    """Per queue: seconds since the last claim (None if none recorded), stalled, wedged
    restarts recently. For `jobs stats`, the dashboard and /readyz; raises if Redis is away."""
    now = now or time.time()
    reports = wedged_reports()
    out = {}
    for queue, depth in depths.items():
        last = last_claim_at(queue)
        out[queue] = {
            "last_claim_age_s": None if last is None else round(max(now - last, 0.0), 1),
            "stalled": depth is not None and queue_stalled(queue, depth, now=now),
            "wedged_restarts": sum(1 for r in reports if r.get("queue") == queue),
        }
    return out


def served_queues() -> list[str]:
    """READYZ_QUEUES, or else the queues this deployment serves: a cluster of it is alive, or
    one claimed from the queue within CLAIMS_TTL (so a queue whose clusters all died is still
    watched, and one that no cluster ever ran is not)."""
    from jobs.liveness import live_clusters
    from jobs.queues import QUEUES

    if settings.READYZ_QUEUES:
        return list(settings.READYZ_QUEUES)
    live = {c.get("queue") for c in live_clusters()}
    client = get_redis()
    return [q for q in QUEUES if q in live or client.exists(f"{CLAIMS_PREFIX}:{q}")]


def readiness_check() -> dict:
    """/readyz: every served queue with wake-ups waiting has claimed something in JOBS_STALL_AFTER."""
    from jobs import broker

    watched = served_queues()
    stalled = [q for q in watched if queue_stalled(q, broker.queue_depth(q))]
    return {"ok": not stalled, "stalled": stalled, "watched": watched, "after_s": settings.JOBS_STALL_AFTER}
