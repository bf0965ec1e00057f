"""The one place that imports the Tasks API (DEP 14). Everything else imports from here.

Django 5.2 has no `django.tasks`; the `django-tasks` backport (pinned in requirements.txt)
provides the same API as `django_tasks`. Django 6.0 ships it as `django.tasks`, with the
exceptions renamed (InvalidTaskError -> InvalidTask, InvalidTaskBackendError ->
InvalidTaskBackend). The names below are Django 6's; moving to Django 6 means this branch
picks `django.tasks` and "django_tasks" leaves INSTALLED_APPS, nothing else.

Application code may import `task` from here or from `django_tasks` / `django.tasks`
directly: the decorator and the Task class are the same objects.
"""

from __future__ import annotations

import django

if django.VERSION >= (6, 0):  # pragma: no cover - Django 6 is not installed yet
    from django.tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task, TaskError
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist, TaskResultMismatch
    from django.tasks.signals import task_enqueued, task_finished, task_started
else:
    from django_tasks import (
        DEFAULT_TASK_BACKEND_ALIAS,
        DEFAULT_TASK_QUEUE_NAME,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        default_task_backend,
        task,
        task_backends,
    )
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task, TaskError
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
    from django_tasks.signals import task_enqueued, task_finished, task_started

__all__ = [
    "DEFAULT_TASK_BACKEND_ALIAS", "DEFAULT_TASK_QUEUE_NAME", "TASK_MAX_PRIORITY", "TASK_MIN_PRIORITY",
    "BaseTaskBackend", "InvalidTask", "InvalidTaskBackend", "Task", "TaskContext", "TaskError", "TaskResult",
    "TaskResultDoesNotExist", "TaskResultMismatch", "TaskResultStatus", "default_task_backend", "task",
    "task_backends", "task_enqueued", "task_finished", "task_started",
]
