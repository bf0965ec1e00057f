"""The 30-second health check: MySQL, Redis and every queue. Its result is the `health`
heartbeat that /readyz and monitoring read; `health_checked` lets others act on it (the
alerts in jobs/monitoring/alerts.py). The thresholds live here, in `breaches()`, once."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.dispatch import Signal
from django.utils import timezone

from jobs.models import Heartbeat
from jobs.probes import check_database, check_redis
from jobs.queues import QUEUES
from jobs.registry import periodic

logger = logging.getLogger(__name__)

# Sent after every health check with `details` (the heartbeat's JSON).
health_checked = Signal()


@dataclass(frozen=True)
class Breach:
    kind: str  # dead_jobs | pending_age | no_cluster
    queue: str
    summary: str
    value: float
    threshold: float

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.queue}"


def breaches(queues: dict[str, dict]) -> list[Breach]:
    """Every threshold a queue crosses (JOBS_ALERT_DEAD_JOBS, JOBS_ALERT_PENDING_AGE, no cluster)."""
    out = []
    for name, q in queues.items():
        dead = int(q.get("dead", 0))
        if dead > settings.JOBS_ALERT_DEAD_JOBS:
            out.append(Breach("dead_jobs", name, f"queue {name}: {dead} dead job(s)", dead,
                              settings.JOBS_ALERT_DEAD_JOBS))
        age = float(q.get("oldest_pending_age_s", 0.0))
        if age > settings.JOBS_ALERT_PENDING_AGE:
            out.append(Breach("pending_age", name, f"queue {name}: oldest pending job is {age:.0f} s old",
                              round(age, 1), settings.JOBS_ALERT_PENDING_AGE))
        if "clusters" in q and q["clusters"] == 0:
            out.append(Breach("no_cluster", name, f"queue {name}: no live cluster", 0, 1))
    return out


def queue_health(now: datetime | None = None) -> dict[str, dict]:
    """Per queue: ledger counts by state, Redis depth, oldest pending age, live workers."""
    from jobs import broker
    from jobs.liveness import live_clusters
    from jobs.monitoring import ledger_counts, oldest_pending

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


def _roll_up() -> dict:
    """Roll the closed minutes' finished jobs up into JobStat (jobs/monitoring/rollup.py),
    bounded per pass. A failure is logged, not a health problem: the views stay exact
    without it (they read more of the ledger until the next pass catches up)."""
    from jobs.monitoring import rollup

    try:
        return rollup.roll_up()
    except Exception as exc:
        logger.exception("health check: the monitoring roll-up failed")
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


@periodic("health_check", cron="* * * * * */30", queue="critical",
          description="every 30 seconds: MySQL, Redis and every queue; writes the health heartbeat")
def health_check() -> str:
    """Check MySQL, Redis and every queue; record the result as the `health` heartbeat
    that /readyz and monitoring read; log a warning for each threshold crossed."""
    started = time.monotonic()
    problems = []
    details: dict = {"ok": True}
    for name, check in (("database", check_database), ("redis", lambda: check_redis(timeout=5.0))):
        try:
            check()
            details[name] = "ok"
        except Exception as exc:
            details[name] = f"error: {exc}"
            problems.append(f"{name}: {exc}")
    if not problems:
        details["queues"] = queues = queue_health()
        problems.extend(b.summary for b in breaches(queues))
    if details["database"] == "ok":
        details["rollup"] = _roll_up()
    details["ok"] = not problems
    details["problems"] = problems
    details["took_ms"] = int((time.monotonic() - started) * 1000)
    Heartbeat.objects.update_or_create(name="health", defaults={"kind": "health", "seen_at": timezone.now(),
                                                                "details": details})
    for problem in problems:
        logger.warning("health check: %s", problem)
    for receiver, error in health_checked.send_robust(sender=health_check, details=details):
        if isinstance(error, Exception):
            logger.error("health receiver %s failed: %s", getattr(receiver, "__name__", receiver), error)
    return "ok" if not problems else "; ".join(problems)
