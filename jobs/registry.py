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
from jobs.limits import LimitError, Limits
from jobs.payloads import Payload
from jobs.queues import QUEUES

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_TIMEOUT = 600  # seconds; django-q2's worker timeout and the lease are sized for this
MAX_RETRIES = 25
MAX_CANCEL_GRACE = 600  # seconds a running job has to stop by itself after a cancel
MAX_EXPIRES_IN = 366 * 24 * 3600  # a deadline further than a year ahead is a mistake
PRIORITY_MIN, PRIORITY_MAX = -100, 100  # the Tasks API's scale: higher runs first
MAX_RETRY_SECONDS = 24 * 3600  # one retry delay, base or cap
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
    # A type declared over a @task function (Tasks API): its dotted path, the unique key
    # template over its arguments, and how its subject is read from a payload.
    task_path: str = ""
    unique_key: str = ""
    subject_from: Callable[[dict[str, Any]], str] | None = None
    # Job controls. cancel_grace: seconds a running job may take to stop by itself after a
    # cancel before its worker process is ended (None: JOBS_CANCEL_GRACE). expires_in: the
    # default deadline, seconds after run_at (None: no deadline). priority: the default.
    cancel_grace: float | None = None
    expires_in: float | None = None
    priority: int = 0
    retry: RetryPolicy | None = None  # None: the engine's JOBS_BACKOFF_* curve
    limits: Limits | None = None  # rate and concurrency, held in Redis (jobs/limits.py)

    def subject_of(self, data: dict[str, Any]) -> str:
        if self.subject_from is not None:
            return self.subject_from(data)[:64]
        if not self.subject:
            return ""
        try:
            return self.subject.format(**data)[:64]
        except (KeyError, IndexError, ValueError):
            return ""


@dataclass(frozen=True)
class RetryPolicy:
    """The wait after failed attempt n (1-based): min(base * factor**(n-1), cap), then
    +/- jitter (a fraction, 0.1 = up to 10 % either way); base and cap default to
    JOBS_BACKOFF_BASE and JOBS_BACKOFF_CAP (1 and 16 s: 1, 2, 4, 8, 16). `delay(job, error)`,
    if given, is asked first: it returns seconds (a vendor's Retry-After) or None for the curve."""

    base: float | None = None
    factor: float = 2.0
    cap: float | None = None
    jitter: float = 0.0
    delay: Callable[[Any, BaseException], float | None] | None = None

    def curve(self, attempt: int) -> float:
        import random

        from django.conf import settings

        base = settings.JOBS_BACKOFF_BASE if self.base is None else self.base
        cap = settings.JOBS_BACKOFF_CAP if self.cap is None else self.cap
        seconds = min(base * (self.factor ** max(attempt - 1, 0)), cap)
        if self.jitter:
            seconds *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(seconds, 0.0)


def _check_controls(where: str, *, cancel_grace, expires_in, priority, retry) -> None:
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if cancel_grace is not None and not (number(cancel_grace) and 0 <= cancel_grace <= MAX_CANCEL_GRACE):
        raise RegistryError(f"{where}: cancel_grace must be seconds from 0 to {MAX_CANCEL_GRACE}, got {cancel_grace!r}")
    if expires_in is not None and not (number(expires_in) and 0 < expires_in <= MAX_EXPIRES_IN):
        raise RegistryError(f"{where}: expires_in must be seconds from 1 to {MAX_EXPIRES_IN} (or None), got {expires_in!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise RegistryError(f"{where}: priority must be a whole number from {PRIORITY_MIN} to {PRIORITY_MAX}, "
                            f"got {priority!r}")
    if retry is None:
        return
    if not isinstance(retry, RetryPolicy):
        raise RegistryError(f"{where}: retry must be a jobs.registry.RetryPolicy, got {retry!r}")
    for field, low in (("base", 0), ("factor", 1), ("cap", 0)):
        value = getattr(retry, field)
        if value is None and field != "factor":
            continue
        if not (number(value) and low <= value <= MAX_RETRY_SECONDS):
            raise RegistryError(f"{where}: retry {field} must be a number from {low} to {MAX_RETRY_SECONDS}, got {value!r}")
    if not (number(retry.jitter) and 0 <= retry.jitter <= 1):
        raise RegistryError(f"{where}: retry jitter must be a fraction from 0 to 1, got {retry.jitter!r}")
    if retry.delay is not None and not callable(retry.delay):
        raise RegistryError(f"{where}: retry delay must be callable(job, error), got {retry.delay!r}")


def _retry_policy(retry_base, retry_factor, retry_cap, retry_jitter, retry_delay) -> RetryPolicy | None:
    """The @job_type keywords as one policy; None when none is given (the engine's curve)."""
    given = {k: v for k, v in (("base", retry_base), ("factor", retry_factor), ("cap", retry_cap),
                               ("jitter", retry_jitter), ("delay", retry_delay)) if v is not None}
    return RetryPolicy(**given) if given else None


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
_task_types: dict[str, str] = {}  # a declared @task's dotted path -> its job type name


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
             handler: Callable[[Any, Any], Any], subject: str = "", description: str = "",
             subject_from: Callable[[dict[str, Any]], str] | None = None, cancel_grace: float | None = None,
             expires_in: float | None = None, priority: int = 0, retry: RetryPolicy | None = None,
             limits: Limits | None = None) -> JobType:
    """Declare a job type. Every policy is a keyword: nothing depends on position.
    `subject_from(payload_json)`, if given, computes the subject instead of the template."""
    _check_policy(name, queue=queue, timeout=timeout, max_retries=max_retries, payload=payload)
    _check_controls(f"job type {name!r}", cancel_grace=cancel_grace, expires_in=expires_in, priority=priority,
                    retry=retry)
    if not callable(handler):
        raise RegistryError(f"job type {name!r}: handler must be callable, got {handler!r}")
    jt = JobType(name=name, queue=queue, timeout=timeout, max_retries=max_retries, payload=payload,
                 handler=handler, subject=subject, description=description or (handler.__doc__ or "").strip(),
                 subject_from=subject_from, cancel_grace=cancel_grace, expires_in=expires_in, priority=priority,
                 retry=retry, limits=limits)
    existing = _types.get(name)
    if existing is not None and existing.handler is not handler:
        raise RegistryError(f"job type {name!r} is declared twice: by {_where(existing.handler)} "
                            f"and by {_where(handler)}")
    _types[name] = jt
    return jt


def job_type(name: str, *, queue: str | None = None, timeout: int, max_retries: int = 3,
             payload: type[Payload] | None = None, subject: str = "", description: str = "",
             unique_key: str = "", cancel_grace: float | None = None, expires_in: float | None = None,
             priority: int = 0, retry_base: float | None = None, retry_factor: float | None = None,
             retry_cap: float | None = None, retry_jitter: float | None = None,
             retry_delay: Callable[[Any, BaseException], float | None] | None = None,
             rate: tuple[int, float | str] | None = None, rate_key: str = "", concurrency: int | None = None,
             concurrency_key: str = ""):
    """Decorator form of register(): the function is the handler, `handler(payload, job)`.

    Controls (each optional): `cancel_grace` seconds a running job has to stop by itself
    after a cancel (default JOBS_CANCEL_GRACE); `expires_in` a default deadline in seconds
    after run_at; `priority` the default (-100 to 100); `retry_base`, `retry_factor`,
    `retry_cap`, `retry_jitter` the retry curve (default JOBS_BACKOFF_BASE, x2, JOBS_BACKOFF_CAP,
    no jitter) and `retry_delay(job, error)` returning seconds or None (use the curve);
    `rate=(count, per)` at most count starts per `per` seconds ('second', 'minute', 'hour',
    'day' or a number) and `concurrency` at most N running, each per `rate_key` /
    `concurrency_key` (templates over the payload: "{account_id}"), held across hosts in
    Redis (jobs/limits.py).

    Over a Tasks API `@task` it declares the task as a job type of its own with our policy
    (see register_task): `@job_type("reports:build", timeout=120, unique_key="{report_id}")`
    above `@task(queue_name="default")`. The task is returned unchanged."""
    retry = _retry_policy(retry_base, retry_factor, retry_cap, retry_jitter, retry_delay)
    try:
        limits = Limits.declare(f"job type {name!r}", rate=rate, rate_key=rate_key, concurrency=concurrency,
                                concurrency_key=concurrency_key)
    except LimitError as exc:
        raise RegistryError(str(exc)) from None
    controls = dict(cancel_grace=cancel_grace, expires_in=expires_in, priority=priority, retry=retry, limits=limits)

    def declare(target):
        from jobs.tasks_compat import Task

        if isinstance(target, Task):
            register_task(name, target, queue=queue, timeout=timeout, max_retries=max_retries,
                          payload=payload, unique_key=unique_key, subject=subject, description=description,
                          **controls)
            return target
        if unique_key:
            raise RegistryError(f"job type {name!r}: unique_key= is for @task declarations; a handler's "
                                "scheduling function passes unique_key= to enqueue()")
        if payload is None:
            raise RegistryError(f"job type {name!r}: payload= is required for a handler(payload, job); "
                                "to declare a @task, put @job_type above @task")
        register(name, queue=queue, timeout=timeout, max_retries=max_retries, payload=payload,
                 handler=target, subject=subject, description=description, **controls)
        return target
    return declare


def register_task(name: str, task, *, queue: str | None = None, timeout: int, max_retries: int = 3,
                  payload=None, unique_key: str = "", subject: str = "", description: str = "",
                  cancel_grace: float | None = None, expires_in: float | None = None, priority: int = 0,
                  retry: RetryPolicy | None = None, limits: Limits | None = None) -> JobType:
    """Declare a Tasks API @task as a job type with our policy. Its arguments are the payload
    (JSON, checked at enqueue), its queue is the task's queue_name, and `unique_key` /
    `subject` are templates over its arguments by name ("{report_id}"). The unique key is
    prefixed with the type's name, so two types never share keys."""
    from jobs.tasks_backend import TaskRunPayload, run_task_job

    where = f"job type {name!r}"
    if payload is not None:
        raise RegistryError(f"{where}: payload= is not used with a @task: its arguments are the payload")
    if queue is not None and queue != task.queue_name:
        raise RegistryError(f"{where}: the queue comes from @task(queue_name=...), which is "
                            f"{task.queue_name!r}; do not give queue={queue!r} as well")
    _check_policy(name, queue=task.queue_name, timeout=timeout, max_retries=max_retries, payload=TaskRunPayload)
    _check_controls(where, cancel_grace=cancel_grace, expires_in=expires_in, priority=priority, retry=retry)
    params = task_parameters(task)
    for what, template in (("unique_key", unique_key), ("subject", subject)):
        for field in _template_fields(where, what, template):
            if field not in params:
                raise RegistryError(f"{where}: {what} {template!r} names {field!r}, which is not an argument "
                                    f"of {task.module_path} (arguments: {', '.join(params) or 'none'})")
    existing_name = _task_types.get(task.module_path)
    if existing_name is not None and existing_name != name:
        raise RegistryError(f"task {task.module_path} is declared twice: as {existing_name!r} and as {name!r}")
    existing = _types.get(name)
    if existing is not None and existing.task_path != task.module_path:
        raise RegistryError(f"{where} is declared twice: by {existing.task_path or _where(existing.handler)} "
                            f"and by {task.module_path}")
    template = subject or unique_key

    def subject_from(data: dict[str, Any]) -> str:
        if not template:
            return ""
        try:
            return template.format(**task_arguments(task, data.get("args", []), data.get("kwargs", {})))
        except (TypeError, KeyError, IndexError, ValueError):
            return ""

    jt = JobType(name=name, queue=task.queue_name, timeout=timeout, max_retries=max_retries,
                 payload=TaskRunPayload, handler=run_task_job, subject=template,
                 description=description or (task.func.__doc__ or "").strip().split("\n")[0],
                 task_path=task.module_path, unique_key=unique_key, subject_from=subject_from,
                 cancel_grace=cancel_grace, expires_in=expires_in, priority=priority, retry=retry, limits=limits)
    _types[name] = jt
    _task_types[task.module_path] = name
    return jt


def _template_fields(where: str, what: str, template: str) -> list[str]:
    """The argument names a "{name}" template uses (only plain names: no indexing)."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise RegistryError(f"{where}: {what} {template!r} is not a format string: {exc}") from None
    for field in fields:
        if not field.isidentifier():
            raise RegistryError(f"{where}: {what} {template!r}: use plain argument names in braces, got {{{field}}}")
    return fields


def task_parameters(task) -> list[str]:
    """The names a @task is called with (without the `context` of takes_context=True)."""
    import inspect

    names = list(inspect.signature(task.func).parameters)
    return names[1:] if task.takes_context else names


def task_arguments(task, args, kwargs) -> dict[str, Any]:
    """args and kwargs bound to the task's parameters by name, defaults filled in. Raises
    TypeError (as calling it would) when they do not fit its signature."""
    import inspect

    signature = inspect.signature(task.func)
    if task.takes_context:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def task_job_type(module_path: str) -> str | None:
    """The job type a @task was declared as with @job_type, if any."""
    return _task_types.get(module_path)


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
    import jobs.tasks_backend  # noqa: F401  (tasks:run, for any @task of the Tasks API)

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
