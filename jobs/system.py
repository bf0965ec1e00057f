"""The engine's own job types: one slot of a periodic schedule, and the no-op used by demos,
tests and benchmarks. The engine's periodic tasks (health check, cleanup) are declared where
they are defined (jobs/health.py, jobs/maintenance.py) and imported here to register them."""

from __future__ import annotations

import ast
import logging
import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from jobs import health, maintenance  # noqa: F401  (declare their periodic tasks)
from jobs.errors import PayloadError, PermanentError
from jobs.payloads import Payload
from jobs.registry import job_type, periodic_by_func, schedulable

logger = logging.getLogger(__name__)

SYSTEM_PERIODIC = "system:periodic"
SYSTEM_NOOP = "system:noop"
# The no-op with a retry curve of its own (0.5 s x3, capped at 5 s), for demos and tests of
# per-type retry policies.
SYSTEM_NOOP_CURVE = "system:noop_curve"
# The no-op behind limits: at most 5 starts per 10 s and 2 running, per marker (a stand-in
# for a vendor account), for demos and tests of jobs/limits.py.
SYSTEM_NOOP_LIMITED = "system:noop_limited"


@dataclass
class PeriodicPayload(Payload):
    """A slot of a django-q2 Schedule row, fired by the dispatcher."""

    schedule_id: int
    name: str
    func: str
    slot: datetime
    args: str = ""
    kwargs: str = ""


@dataclass
class NoopPayload(Payload):
    """For demos, benchmarks and tests: sleeps, or fails its first `fail_times` attempts, or
    SIGKILLs its own worker process in its first `crash_times` attempts (a job that kills its
    worker: the engine must not retry it forever); with a marker, appends "job_id:attempt" to
    the Redis list nextevent:noop:<marker>."""

    sleep: float = 0.0
    fail_times: int = 0
    permanent: bool = False
    marker: str = ""
    crash_times: int = 0
    # Job controls: check job.cancel_requested() while sleeping (a cooperative handler);
    # fail with a vendor's "Retry-After: N s" (honoured by the type's retry_delay hook).
    cooperative: bool = False
    retry_after: float = 0.0

    def validate(self):
        if not 0 <= self.sleep <= 600:
            raise PayloadError("sleep", f"must be a number of seconds from 0 to 600, got {self.sleep!r}")
        if self.fail_times < 0:
            raise PayloadError("fail_times", "must be >= 0")
        if self.crash_times < 0:
            raise PayloadError("crash_times", "must be >= 0")
        if len(self.marker) > 64:
            raise PayloadError("marker", "must be at most 64 characters")
        if not 0 <= self.retry_after <= 3600:
            raise PayloadError("retry_after", f"must be seconds from 0 to 3600, got {self.retry_after!r}")


class DemoVendorBusy(Exception):
    """What an adapter raises for a vendor's 429 / 503 with a Retry-After header."""

    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"vendor busy, Retry-After: {retry_after:g} s")


def retry_after_of(job, error: BaseException) -> float | None:
    """A retry_delay hook: the vendor's Retry-After when it gave one, else the curve."""
    return getattr(error, "retry_after", None)


def load_periodic_call(func: str, args: str, kwargs: str, *, name: str):
    """The declared periodic function for a Schedule row, with its literal args. A row that
    names anything else (`os.system`, a typo, a function removed since) is refused: people
    who can edit Schedule rows in the admin must not be able to run arbitrary code."""
    declared = periodic_by_func(func)
    if declared is None:
        raise PermanentError(f"schedule {name!r}: {func!r} is not a declared periodic task; "
                             "declare it with @jobs.registry.periodic in its app's jobs.py")
    try:
        args_value = ast.literal_eval(args) if args else ()
        kwargs_value = ast.literal_eval(kwargs) if kwargs else {}
    except (ValueError, SyntaxError) as exc:
        raise PermanentError(f"schedule {name!r}: cannot read args/kwargs of {func!r}: {exc}") from exc
    if not isinstance(args_value, tuple):
        args_value = (args_value,)
    if not isinstance(kwargs_value, dict):
        raise PermanentError(f"schedule {name!r}: kwargs must be a dict literal")
    return declared.function, args_value, kwargs_value


@job_type(SYSTEM_PERIODIC, queue="critical", timeout=600, max_retries=3, payload=PeriodicPayload,
          subject="schedule:{name}", description="one slot of a periodic schedule")
def handle_system_periodic(payload: PeriodicPayload, job) -> str:
    """Run one slot of a django-q2 Schedule row: its declared function with its args."""
    try:
        function, args, kwargs = load_periodic_call(payload.func, payload.args, payload.kwargs, name=payload.name)
    except PermanentError as exc:
        logger.error("periodic job %s refused: %s", job.pk, exc)
        raise
    result = function(*args, **kwargs)
    return "" if result is None else str(result)


@job_type(SYSTEM_NOOP_CURVE, queue="default", timeout=60, max_retries=3, payload=NoopPayload,
          retry_base=0.5, retry_factor=3, retry_cap=5, description="demo job with its own retry curve")
def handle_system_noop_curve(payload: NoopPayload, job) -> str:
    return handle_system_noop(payload, job)


@job_type(SYSTEM_NOOP_LIMITED, queue="default", timeout=60, max_retries=3, payload=NoopPayload,
          rate=(5, 10), rate_key="{marker}", concurrency=2, concurrency_key="{marker}",
          description="demo job behind a rate and a concurrency limit per marker")
def handle_system_noop_limited(payload: NoopPayload, job) -> str:
    return handle_system_noop(payload, job)


# cancel_grace 3 s: a demo that ignores a cancel is ended quickly.
@job_type(SYSTEM_NOOP, queue="default", timeout=60, max_retries=3, payload=NoopPayload,
          cancel_grace=3, retry_delay=retry_after_of, description="demo / benchmark job")
def handle_system_noop(payload: NoopPayload, job) -> str:
    if payload.marker:
        # Demos and tests watch this list to see every run of every attempt.
        from nextevent.redis import get_redis

        get_redis().rpush(f"nextevent:noop:{payload.marker}", f"{job.pk}:{job.attempts}")
    if job.attempts <= payload.crash_times:
        os.kill(os.getpid(), signal.SIGKILL)  # as a segfault or the OOM killer would
    if payload.sleep and payload.cooperative:
        deadline = time.monotonic() + payload.sleep
        while time.monotonic() < deadline:  # bounded by `sleep`
            if job.cancel_requested():
                return "stopped: cancel requested"
            time.sleep(0.05)
    elif payload.sleep:
        time.sleep(payload.sleep)
    if job.attempts <= payload.fail_times:
        if payload.retry_after:
            raise DemoVendorBusy(payload.retry_after)
        if payload.permanent:
            raise PermanentError(f"demo permanent failure (attempt {job.attempts})")
        raise RuntimeError(f"demo failure {job.attempts} of {payload.fail_times}")
    return payload.marker or "ok"


@schedulable
def periodic_noop() -> str:
    """For trying a schedule from the admin (and for tests): returns the time it ran."""
    return timezone.now().isoformat()
