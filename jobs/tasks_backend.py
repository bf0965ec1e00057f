"""Django's Tasks API (DEP 14: `@task`, `.enqueue()`, `get_result()`) on the job engine.

    TASKS = {"default": {"BACKEND": "jobs.tasks_backend.LedgerBackend"}}

A `@task` function's `.enqueue(*args, **kwargs)` records a ledger job, as `enqueue()` does:
the row in the caller's transaction, the wake-up pushed on commit. The job runs on its
queue's django-q2 cluster like any other, with leases, retries with backoff, the dead state,
its type's timeout, the admin and `manage.py jobs`. Its type is `tasks:run` (payload: the
task's dotted path, its JSON args and kwargs), or the type the task was declared as with
`@job_type(...)` over `@task` (our policy: timeout, retries, unique key; jobs/registry.py).

- queue: `queue_name` must be one of jobs.queues.QUEUES.
- priority (-100..100): a task whose priority is at least OPTIONS["CRITICAL_PRIORITY"]
  (default 50) runs on the `critical` queue (the most workers); any other priority runs on
  its queue_name. Within a queue jobs start in run_at order: django-q2 reads one Redis list
  per queue in order, so priority cannot reorder them (see README: Priorities).
- run_after: the job's run_at (the dispatcher's precision, ~0.1 s).
- get_result(id): the ledger row as a TaskResult. scheduled / pending / retry -> READY
  (retry with errors: it will run again), active -> RUNNING, completed -> SUCCESSFUL,
  dead / cancelled -> FAILED. The return value is stored as JSON in Job.result.
- Only functions decorated with @task run: a payload naming anything else (`os.system`, a
  typo) goes dead at once, like periodic tasks (jobs.system.load_periodic_call).
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from jobs import services
from jobs.errors import PayloadError, PermanentError, Snooze
from jobs.models import Job, JobState
from jobs.payloads import Payload
from jobs.queues import QUEUES
from jobs.registry import MAX_PAYLOAD_BYTES, get_job_type, register, task_arguments, task_job_type
from jobs.services.running import MAX_RESULT_CHARS
from jobs.tasks_compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    TASK_MAX_PRIORITY,
    TASK_MIN_PRIORITY,
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
    task_finished,
    task_started,
)

TASKS_RUN = "tasks:run"
CRITICAL_QUEUE = "critical"
DEFAULT_CRITICAL_PRIORITY = 50
TASK_PATH_MAX_CHARS = 255
MAX_JSON_DEPTH = 50

STATUS_OF_STATE = {
    JobState.SCHEDULED: TaskResultStatus.READY,
    JobState.PENDING: TaskResultStatus.READY,
    JobState.RETRY: TaskResultStatus.READY,
    JobState.ACTIVE: TaskResultStatus.RUNNING,
    JobState.COMPLETED: TaskResultStatus.SUCCESSFUL,
    JobState.DEAD: TaskResultStatus.FAILED,
    JobState.CANCELLED: TaskResultStatus.FAILED,
    JobState.EXPIRED: TaskResultStatus.FAILED,
}


@dataclass
class TaskRunPayload(Payload):
    """A @task call: the function's dotted path and its JSON arguments. priority, queue_name,
    backend and run_after are the Task's as enqueued, kept to rebuild it in get_result()."""

    task: str
    args: list
    kwargs: dict
    priority: int = 0
    queue_name: str = "default"
    backend: str = DEFAULT_TASK_BACKEND_ALIAS
    run_after: datetime | None = None

    def validate(self):
        if not self.task or len(self.task) > TASK_PATH_MAX_CHARS or "." not in self.task:
            raise PayloadError("task", f"must be a dotted path of at most {TASK_PATH_MAX_CHARS} characters, "
                                       f"got {self.task!r}")
        if not TASK_MIN_PRIORITY <= self.priority <= TASK_MAX_PRIORITY:
            raise PayloadError("priority", f"must be {TASK_MIN_PRIORITY} to {TASK_MAX_PRIORITY}, got {self.priority}")
        if not all(isinstance(k, str) for k in self.kwargs):
            raise PayloadError("kwargs", "keys must be strings")


# ------------------------------------------------------------------ arguments and results


def check_json(value: Any, where: str, depth: int = 0) -> Any:
    """`value` as it will come back from the ledger's JSON (tuples become lists), or
    TypeError naming where the first value that JSON cannot carry is. The message keeps the
    backport's wording ("Unsupported type: <class ...>") so callers matching it still do."""
    if depth > MAX_JSON_DEPTH:
        raise TypeError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not a JSON number")
        return value
    if isinstance(value, (list, tuple)):
        return [check_json(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings (JSON object keys), got {k!r}")
            out[k] = check_json(v, f"{where}[{k!r}]", depth + 1)
        return out
    raise TypeError(f"{where}: Unsupported type: {type(value)}; task arguments and return values must be JSON "
                    "(str, int, float, bool, None, list, dict with string keys): pass ids, not objects")


def load_task(path: str) -> Task:
    """The @task at `path`. Anything else is refused (PermanentError: the job goes dead at
    once): only functions decorated with @task run as tasks, never any importable callable."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise PermanentError(f"task: {path!r} is not a dotted path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PermanentError(f"task: cannot import {module_name!r} for {path!r}: {exc}") from exc
    found = getattr(module, attr, None)
    if not isinstance(found, Task) or found.module_path != path:
        raise PermanentError(f"task: {path!r} is not a @task function; only functions decorated with "
                             "@task (Tasks API) run as tasks")
    return found


def _task_of(data: dict[str, Any]) -> Task:
    """The Task as it was enqueued (priority, queue, run_after) from a payload."""
    task = load_task(data["task"])
    run_after = data.get("run_after")
    return task.using(priority=data.get("priority", task.priority), queue_name=data.get("queue_name"),
                      backend=data.get("backend"),
                      run_after=datetime.fromisoformat(run_after) if isinstance(run_after, str) else run_after)


def _worker_ids(job: Job) -> list[str]:
    """One entry per attempt started (TaskResult.attempts is its length): the worker of each
    failed attempt from its error entry, the last attempt's from the row."""
    by_attempt = {e.get("attempt"): e.get("worker", "") for e in job.errors or []}
    return [by_attempt.get(n) or job.worker or "" for n in range(1, job.attempts + 1)]


def _errors(job: Job) -> list[TaskError]:
    return [TaskError(exception_class_path=e.get("exception_class") or "jobs.errors.JobError",
                      traceback=e.get("traceback") or e.get("error", ""))
            for e in job.errors or []]


def result_from_job(job: Job, task: Task | None = None, *, alias: str | None = None) -> TaskResult:
    data = job.payload
    task = task or _task_of(data)
    status = STATUS_OF_STATE[JobState(job.state)]
    result = TaskResult(
        task=task, id=str(job.pk), status=status, enqueued_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at if status in (
            TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED) else None,
        last_attempted_at=job.started_at, args=data.get("args", []), kwargs=data.get("kwargs", {}),
        backend=alias or data.get("backend", DEFAULT_TASK_BACKEND_ALIAS), errors=_errors(job),
        worker_ids=_worker_ids(job))
    if status == TaskResultStatus.SUCCESSFUL and job.result:
        try:
            object.__setattr__(result, "_return_value", json.loads(job.result))
        except ValueError:
            # Not JSON: completed before the task stored its value this way (or written by
            # hand); the text itself is the most honest value to show.
            object.__setattr__(result, "_return_value", job.result)
    return result


# ------------------------------------------------------------------ the backend


class LedgerBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True  # Task.call() runs a coroutine function with async_to_sync
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        # Unlike the backport's backends, an empty or missing QUEUES does not mean "any
        # name": a job can only run on a queue that has a cluster.
        queues = params.get("QUEUES") or list(QUEUES)
        unknown = sorted(set(queues) - set(QUEUES))
        if unknown:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['QUEUES']: unknown queue(s) {', '.join(unknown)}; "
                                       f"known: {', '.join(QUEUES)}")
        self.queues = set(queues)
        critical = self.options.get("CRITICAL_PRIORITY", DEFAULT_CRITICAL_PRIORITY)
        if isinstance(critical, bool) or not isinstance(critical, int) or \
                not TASK_MIN_PRIORITY <= critical <= TASK_MAX_PRIORITY + 1:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['CRITICAL_PRIORITY']: must be a whole number "
                                       f"from {TASK_MIN_PRIORITY} to {TASK_MAX_PRIORITY + 1} (never), got {critical!r}")
        self.critical_priority = critical

    def validate_task(self, task: Task) -> None:
        if task.queue_name not in self.queues:
            # The backport's wording first (callers match it), then what to do.
            raise InvalidTask(f"Queue '{task.queue_name}' is not valid for backend: queue_name must be one of "
                              f"{', '.join(q for q in QUEUES if q in self.queues)} (jobs.queues.QUEUES)")
        super().validate_task(task)

    def queue_for(self, task: Task) -> str:
        """The documented priority mapping: high priority runs on `critical`."""
        return CRITICAL_QUEUE if task.priority >= self.critical_priority else task.queue_name

    def enqueue(self, task: Task, args, kwargs) -> TaskResult:
        self.validate_task(task)
        args = check_json(list(args), "args")
        kwargs = check_json(dict(kwargs), "kwargs")
        try:
            bound = task_arguments(task, args, kwargs)
        except TypeError as exc:
            raise TypeError(f"{task.module_path}: arguments do not match its signature: {exc}") from None
        payload = {"task": task.module_path, "args": args, "kwargs": kwargs, "priority": task.priority,
                   "queue_name": task.queue_name, "backend": task.backend,
                   "run_after": task.run_after.isoformat() if task.run_after else None}
        size = len(json.dumps(payload, ensure_ascii=False).encode())
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(f"args/kwargs: {size} bytes of JSON with the task's path; at most {MAX_PAYLOAD_BYTES} "
                             "(pass ids, not data)")
        type_name = task_job_type(task.module_path) or TASKS_RUN
        unique_key = None
        template = get_job_type(type_name).unique_key
        if template:
            unique_key = f"{type_name}:{template.format(**bound)}"
        job_id = services.job_create(job_type=type_name, payload=payload, run_at=task.run_after,
                                     queue=self.queue_for(task), unique_key=unique_key,
                                     # The Tasks API's scale is the ledger's: -100 to 100, higher first.
                                     priority=task.priority)
        # Read back, in the caller's transaction: with a unique key the id may be a live job
        # that was moved, and the result must match what get_result() will say.
        result = result_from_job(services.fetch_job(job_id), task, alias=self.alias)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        try:
            job_id = int(str(result_id))
        except ValueError:
            raise TaskResultDoesNotExist(f"{result_id!r}: task result ids are job ids (integers)") from None
        job = Job.objects.filter(pk=job_id).first()
        if job is None:
            raise TaskResultDoesNotExist(f"job {job_id} does not exist")
        if not is_task_type(job.job_type):
            raise TaskResultDoesNotExist(f"job {job_id} is a {job.job_type} job, not a task")
        try:
            return result_from_job(job, alias=self.alias)
        except PermanentError as exc:
            # The task's code is gone or renamed since: there is no Task to attach it to.
            raise TaskResultDoesNotExist(f"job {job_id}: {exc}") from exc


def is_task_type(name: str) -> bool:
    """tasks:run, or a type declared with @job_type over a @task."""
    if name == TASKS_RUN:
        return True
    try:
        return bool(get_job_type(name).task_path)
    except ValueError:  # UnknownJobType: a type removed since
        return False


# ------------------------------------------------------------------ the job type


def run_task_job(payload: TaskRunPayload, job) -> str:
    """The handler of tasks:run and of every type declared over a @task: call the function
    with its arguments; its JSON return value becomes the job's result. Exceptions take the
    engine's way: PermanentError -> dead, Snooze -> wait, anything else -> retry."""
    jt = get_job_type(job.job_type)
    if jt.task_path and payload.task != jt.task_path:
        raise PermanentError(f"task: a {job.job_type} job runs {jt.task_path}, not {payload.task!r}")
    task = _task_of(payload.to_json())
    result = result_from_job(job, task)
    task_started.send(LedgerBackend, task_result=result)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *payload.args, **payload.kwargs)
        else:
            value = task.call(*payload.args, **payload.kwargs)
        try:
            text = json.dumps(check_json(value, "return value"), ensure_ascii=False)
        except TypeError as exc:
            raise PermanentError(str(exc)) from exc
        if len(text) > MAX_RESULT_CHARS:
            raise PermanentError(f"return value: {len(text)} characters of JSON; at most {MAX_RESULT_CHARS} "
                                 "(return ids, not data)")
    except BaseException as exc:
        final = isinstance(exc, PermanentError) or (
            not isinstance(exc, Snooze) and job.attempts - 1 >= job.max_retries)
        if final:
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            task_finished.send(LedgerBackend, task_result=result)
        raise
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "_return_value", json.loads(text))
    object.__setattr__(result, "finished_at", timezone.now())
    task_finished.send(LedgerBackend, task_result=result)
    return text


def _generic_subject(data: dict[str, Any]) -> str:
    # People look for a task by its function: the tail of its path fits the 64 characters.
    return str(data.get("task", ""))[-64:]


register(TASKS_RUN, queue="default", timeout=300, max_retries=3, payload=TaskRunPayload, handler=run_task_job,
         subject_from=_generic_subject, description="a Tasks API @task (django.tasks)")
