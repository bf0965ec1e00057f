"""One structured log line per job event (enqueued, started, retried, snoozed, dead,
completed, ...). With LOG_FORMAT=json the fields become the JSON line's keys."""

from __future__ import annotations

import logging

logger = logging.getLogger("jobs.events")


def log_job_event(event: str, job, *, level: int = logging.INFO, **fields) -> None:
    if not logger.isEnabledFor(level):
        return
    data = {
        "event": event,
        "job_id": job.pk,
        "job_type": job.job_type,
        "queue": job.queue,
        "attempt": job.attempts,
        "news_id": job.news_id,
        **fields,
    }
    text = " ".join(f"{k}={v}" for k, v in data.items() if v is not None and k != "event")
    logger.log(level, "job %s %s", event, text, extra={"fields": data})
