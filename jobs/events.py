"""One structured log line per job event (enqueued, started, retried, snoozed, dead,
completed, ...). With LOG_FORMAT=json the fields become the JSON line's keys."""

from __future__ import annotations

import logging

from django.utils import timezone

logger = logging.getLogger("jobs.events")

# Events that end an attempt without finishing the job: their line carries the attempt's
# duration too (completed and dead pass theirs explicitly).
ATTEMPT_ENDING_EVENTS = frozenset({"retried", "snoozed"})


def log_job_event(event: str, job, *, level: int = logging.INFO, **fields) -> None:
    if not logger.isEnabledFor(level):
        return
    started_at = getattr(job, "started_at", None)
    if event in ATTEMPT_ENDING_EVENTS and fields.get("duration_ms") is None and started_at is not None:
        fields["duration_ms"] = int((timezone.now() - started_at).total_seconds() * 1000)
    data = {
        "event": event,
        "job_id": job.pk,
        "job_type": job.job_type,
        "queue": job.queue,
        "attempt": job.attempts,
        "subject": job.subject or None,
        **fields,
    }
    text = " ".join(f"{k}={v}" for k, v in data.items() if v is not None and k != "event")
    logger.log(level, "job %s %s", event, text, extra={"fields": data})
