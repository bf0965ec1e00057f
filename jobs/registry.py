"""The job-type registry: each app declares its own job types and periodic tasks; the engine
runs them without knowing any of them by name.

    # news/jobs.py
    @job_type("news:expiration", queue="news", timeout=60, max_retries=3,
              payload=NewsExpirationPayload, subject="news:{news_id}")
    def handle_news_expiration(payload, job): ...

    @periodic("news_archive_sweep", cron="0 * * * *", queue="news")
    def news_archive_sweep(): ...

`autodiscover()` imports `<app>.jobs` of every installed app at start-up, the way Django's
admin finds `admin.py` (it runs in JobsConfig.ready(), so in every web and worker process).
Mistakes in a declaration (a duplicate name, an unknown queue, a timeout out of range) raise
RegistryError then, naming the type, not when the first job of it runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import autodiscover_modules

from jobs.errors import PayloadError, UnknownJobType
from jobs.payloads import Payload
from jobs.queues import QUEUES

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_TIMEOUT = 600  # seconds; django-q2's worker timeout and the lease are sized for this
MAX_RETRIES = 25
NAME_MAX_CHARS = 64  # Job.job_type


class RegistryError(ImproperlyConfigured):
    """A job type or periodic task declared wrongly; raised at start-up."""


@dataclass(frozen=True)
class JobType:
    name: str
    queue: str
    timeout: int  # seconds; a timeout is a failed attempt
    max_retries: int
    payload: type[Payload]
    handler: Callable[[Any, Any], Any]
    subject: str = ""  # format string over the payload's fields, e.g. "news:{news_id}"
    description: str = ""

    def subject_of(self, data: dict[str, Any]) -> str:
        if not self.subject:
            return ""
        try:
            return self.subject.format(**data)[:64]
        except (KeyError, IndexError, ValueError):
            return ""


@dataclass(frozen=True)
class Periodic:
    name: str
    func: str  # dotted path, stored in the django-q2 Schedule row
    cron: str  # croniter syntax in TIME_ZONE; a sixth field is seconds
    queue: str
    description: str
    function: Callable[..., Any]


_types: dict[str, JobType] = {}
_periodic: dict[str, Periodic] = {}
_schedulable: dict[str, Periodic] = {}  # by dotted path


def _check_policy(name: str, *, queue: str, timeout: int, max_retries: int, payload) -> None:
    where = f"job type {name!r}"
    if not isinstance(name, str) or not name or len(name) > NAME_MAX_CHARS or ":" not in name:
        raise RegistryError(f"job type {name!r}: name must be '<app>:<action>', at most {NAME_MAX_CHARS} characters")
    if queue not in QUEUES:
        raise RegistryError(f"{where}: unknown queue {queue!r}; known: {', '.join(QUEUES)}")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT:
        raise RegistryError(f"{where}: timeout must be whole seconds from 1 to {MAX_TIMEOUT}, got {timeout!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES:
        raise RegistryError(f"{where}: max_retries must be 0 to {MAX_RETRIES}, got {max_retries!r}")
    if not (isinstance(payload, type) and issubclass(payload, Payload)):
        raise RegistryError(f"{where}: payload must be a jobs.payloads.Payload dataclass, got {payload!r}")


def register(name: str, *, queue: str, timeout: int, max_retries: int = 3, payload: type[Payload],
             handler: Callable[[Any, Any], Any], subject: str = "", description: str = "") -> JobType:
    """Declare a job type. Every policy is a keyword: nothing depends on position."""
    _check_policy(name, queue=queue, timeout=timeout, max_retries=max_retries, payload=payload)
    if not callable(handler):
        raise RegistryError(f"job type {name!r}: handler must be callable, got {handler!r}")
    jt = JobType(name=name, queue=queue, timeout=timeout, max_retries=max_retries, payload=payload,
                 handler=handler, subject=subject, description=description or (handler.__doc__ or "").strip())
    existing = _types.get(name)
    if existing is not None and existing.handler is not handler:
        raise RegistryError(f"job type {name!r} is declared twice: by {_where(existing.handler)} "
                            f"and by {_where(handler)}")
    _types[name] = jt
    return jt


def job_type(name: str, *, queue: str, timeout: int, max_retries: int = 3, payload: type[Payload],
             subject: str = "", description: str = ""):
    """Decorator form of register(): the function is the handler, `handler(payload, job)`."""
    def declare(handler):
        register(name, queue=queue, timeout=timeout, max_retries=max_retries, payload=payload,
                 handler=handler, subject=subject, description=description)
        return handler
    return declare


def periodic(name: str, *, cron: str, queue: str, description: str = ""):
    """Declare a function as a periodic task: a row of the periodic table (django-q2
    Schedule, kept by name), fired by the dispatcher as a `system:periodic` job. Only
    declared functions run from Schedule rows."""
    def declare(function):
        from croniter import croniter

        if queue not in QUEUES:
            raise RegistryError(f"periodic task {name!r}: unknown queue {queue!r}; known: {', '.join(QUEUES)}")
        if not croniter.is_valid(cron):
            raise RegistryError(f"periodic task {name!r}: invalid cron expression {cron!r}")
        func = _where(function)
        existing = _periodic.get(name)
        if existing is not None and existing.func != func:
            raise RegistryError(f"periodic task {name!r} is declared twice: by {existing.func} and by {func}")
        _periodic[name] = Periodic(name=name, func=func, cron=cron, queue=queue,
                                   description=description or (function.__doc__ or "").strip().split("\n")[0],
                                   function=function)
        return function
    return declare


def schedulable(function):
    """Declare a function that people may name in a Schedule row they create themselves in
    the admin, without a row of its own in the periodic table."""
    func = _where(function)
    _schedulable[func] = Periodic(name="", func=func, cron="", queue="", description="", function=function)
    return function


def _where(function) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def autodiscover() -> None:
    """Import the engine's own job types, then `<app>.jobs` of every installed app."""
    import jobs.system  # noqa: F401  (system:periodic, system:noop, the engine's periodic tasks)

    autodiscover_modules("jobs")


def get_job_type(name: str) -> JobType:
    try:
        return _types[name]
    except KeyError:
        raise UnknownJobType(f"job_type: unknown job type {name!r}; known: {', '.join(sorted(_types))}") from None


def job_types() -> dict[str, JobType]:
    return dict(_types)


def periodic_table() -> list[Periodic]:
    return list(_periodic.values())


def periodic_by_func(func: str) -> Periodic | None:
    """The declared periodic task (or schedulable function) stored in a Schedule row as
    `func`, if any."""
    return next((p for p in _periodic.values() if p.func == func), None) or _schedulable.get(func)


def validate_payload(job_type: JobType, payload: Any) -> dict[str, Any]:
    """Validate and normalise a payload; returns its JSON form. Raises PayloadError."""
    if isinstance(payload, Payload):
        payload = payload.to_json()
    obj = job_type.payload.from_json(payload)
    data = obj.to_json()
    size = len(json.dumps(data, ensure_ascii=False).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError("payload", f"is {size} bytes; at most {MAX_PAYLOAD_BYTES} (payloads carry ids)")
    return data
