"""A third-party Django app's tasks, written against the Tasks API alone: it imports
`django_tasks` (Django 6: `django.tasks`) and knows nothing of NextEvent's engine. The tests
enqueue these through TASKS["default"] = jobs.tasks_backend.LedgerBackend."""

from __future__ import annotations

import time
from typing import Any

from django_tasks import TaskContext, task


@task()
def noop(*args: Any, **kwargs: Any) -> None:
    return None


@task
def noop_from_bare_decorator(*args: Any, **kwargs: Any) -> None:
    return None


@task()
async def noop_async(*args: Any, **kwargs: Any) -> str:
    return "async ran"


@task()
def meaning_of_life() -> int:
    return 42


@task()
def add(a: int, b: int) -> dict:
    return {"sum": a + b, "inputs": [a, b]}


@task()
def failing_value_error() -> None:
    raise ValueError("This task failed due to ValueError")


@task()
def failing_system_exit() -> None:
    raise SystemExit("This task failed due to SystemExit")


@task()
def complex_exception() -> None:
    raise ValueError(ValueError("This task failed"))


@task()
def complex_return_value() -> Any:
    return lambda: True  # neither JSON nor picklable


@task()
def huge_return_value(chars: int) -> str:
    return "x" * chars


@task(takes_context=True)
def get_task_id(context: TaskContext) -> str:
    return context.task_result.id


@task(takes_context=True)
def flaky(context: TaskContext, fail_attempts: int) -> dict:
    """Fails its first `fail_attempts` attempts, then returns which attempt succeeded."""
    if context.attempt <= fail_attempts:
        raise RuntimeError(f"flaky: attempt {context.attempt} of {fail_attempts} fails")
    return {"attempt": context.attempt, "id": context.task_result.id}


@task(priority=60)
def urgent() -> str:
    return "urgent"


@task(queue_name="news")
def on_news_queue() -> str:
    return "news"


@task()
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def plain_function(marker: str) -> None:
    """Not a task: a payload naming it must never make a worker call it."""
    from nextevent.redis import get_redis

    get_redis().rpush(f"nextevent:test:{marker}", "called")
