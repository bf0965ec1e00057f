"""Alerts. The 30-second health check (jobs/health.py: health_check) sends its result to
alert_on_health_check (connected in JobsConfig.ready), which raises an alert for each condition that holds:

- dead_jobs:<queue>       the queue has more than JOBS_ALERT_DEAD_JOBS dead jobs (default 0:
                          any dead job);
- pending_age:<queue>     the queue's oldest pending job has waited more than
                          JOBS_ALERT_PENDING_AGE seconds (default 300).

Raising = one error-level log line and, if ALERT_WEBHOOK_URL is set, one JSON POST. Each
condition is raised at most once per ALERT_REPEAT_MINUTES across all processes and hosts:
the first to SET NX the condition's Redis key (with that expiry) owns it. A failed POST
gives the key back, so the next check (30 s later) tries again rather than losing it."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from jobs.health import breaches
from jobs.models import Job, JobState
from jobs.monitoring import first_line
from jobs.monitoring.webhook import post_alert

logger = logging.getLogger(__name__)

KEY_PREFIX = "nextevent:alert:"
JOBS_IN_ALERT = 5

# Used only while Redis cannot be reached: then each process dedupes on its own.
_local_lock = threading.Lock()
_local_claims: dict[str, float] = {}


@dataclass(frozen=True)
class Alert:
    key: str  # the condition: "<kind>:<queue>"
    kind: str
    queue: str
    summary: str
    value: float
    threshold: float
    jobs: list[dict] = field(default_factory=list)


ALERTED_KINDS = ("dead_jobs", "pending_age")  # "no live cluster" is for the dashboard and /readyz


def alerts_from_health(details: dict) -> list[Alert]:
    return [Alert(b.key, b.kind, b.queue, b.summary, b.value, b.threshold)
            for b in breaches(details.get("queues") or {}) if b.kind in ALERTED_KINDS]


def _claim(key: str, ttl: int) -> bool:
    from nextevent.redis import get_redis

    try:
        return bool(get_redis().set(KEY_PREFIX + key, timezone.now().isoformat(), nx=True, ex=ttl))
    except Exception as exc:
        logger.warning("alert dedupe: Redis unavailable (%s); deduping in this process only", type(exc).__name__)
    with _local_lock:
        now = time.monotonic()
        if _local_claims.get(key, 0.0) > now:
            return False
        _local_claims[key] = now + ttl
        return True


def _release(key: str) -> None:
    from nextevent.redis import get_redis

    with _local_lock:
        _local_claims.pop(key, None)
    try:
        get_redis().delete(KEY_PREFIX + key)
    except Exception:
        pass


def _recent_jobs(alert: Alert) -> list[dict]:
    if alert.kind == "dead_jobs":
        qs = Job.objects.filter(queue=alert.queue, state=JobState.DEAD).order_by("-finished_at", "-pk")
    else:
        qs = Job.objects.filter(queue=alert.queue, state=JobState.PENDING).order_by("dispatched_at", "pk")
    return [{"id": j.pk, "job_type": j.job_type, "subject": j.subject, "error": first_line(j.last_error, 200)}
            for j in qs[:JOBS_IN_ALERT]]


def alert_payload(alert: Alert) -> dict:
    return {
        "source": "nextevent",
        "alert": alert.kind,
        "key": alert.key,
        "severity": "error",
        "queue": alert.queue,
        "summary": alert.summary,
        "value": alert.value,
        "threshold": alert.threshold,
        "at": timezone.now().isoformat(),
        "host": socket.gethostname(),
        "repeat_minutes": settings.ALERT_REPEAT_MINUTES,
        "jobs": alert.jobs,
        "text": f"[nextevent] {alert.summary}",  # what Slack-style webhooks display
    }


def raise_alert(alert: Alert) -> str:
    """Log and post `alert` unless it was raised within ALERT_REPEAT_MINUTES. Returns
    "suppressed", "logged" (no webhook configured), "posted" or "post_failed"."""
    if not _claim(alert.key, settings.ALERT_REPEAT_MINUTES * 60):
        logger.debug("alert %s suppressed: raised within the last %s min", alert.key, settings.ALERT_REPEAT_MINUTES)
        return "suppressed"
    try:
        alert = Alert(**{**alert.__dict__, "jobs": _recent_jobs(alert)})
    except Exception:
        logger.exception("alert %s: could not list its jobs", alert.key)
    logger.error("ALERT %s: %s", alert.key, alert.summary, extra={"fields": {
        "event": "alert", "alert": alert.kind, "key": alert.key, "queue": alert.queue, "value": alert.value,
        "threshold": alert.threshold, "job_ids": [j["id"] for j in alert.jobs]}})
    if not settings.ALERT_WEBHOOK_URL:
        return "logged"
    if post_alert(settings.ALERT_WEBHOOK_URL, alert_payload(alert), timeout=settings.ALERT_WEBHOOK_TIMEOUT):
        return "posted"
    _release(alert.key)
    return "post_failed"


def alert_on_health_check(details: dict, **signal_kwargs) -> list[str]:
    return [raise_alert(alert) for alert in alerts_from_health(details)]
