"""Our own work declared the Tasks API way: a @task function plus the engine's policy with
@job_type above it (jobs/registry.py). In an app these live in <app>/jobs.py, which every
process imports at start-up."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from jobs.errors import PermanentError, Snooze
from jobs.registry import job_type
from jobs.tasks_compat import task


@job_type("reports:build", timeout=120, max_retries=5, unique_key="{report_id}", subject="report:{report_id}")
@task(queue_name="default")
def build_report(report_id: int, fmt: str = "pdf") -> dict:
    """Build a report (at most one live job per report)."""
    return {"report_id": report_id, "fmt": fmt}


@job_type("reports:refuse", timeout=30, max_retries=3)
@task()
def refuse_report(report_id: int) -> None:
    raise PermanentError(f"report {report_id} does not exist")


@job_type("reports:wait", timeout=30)
@task()
def wait_for_quota() -> None:
    raise Snooze(timezone.now() + timedelta(hours=1), "the partner's daily quota is used up")
