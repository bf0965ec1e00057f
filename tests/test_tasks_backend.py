"""Django's Tasks API on the job engine (jobs/tasks_backend.py), on the real database and
Redis; jobs are run in this process with jobs.worker.run_job, as a cluster's worker runs
them (tests/test_tasks_cluster.py runs them on a real qcluster).

The first part is the django-tasks project's own backend expectations (its tests/tests/
test_tasks.py, test_immediate_backend.py and the database backend's tests of 0.11), adapted
where the ledger's semantics are stronger: the README fragment lists each and what differs."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.tasks_backend import TASKS_RUN, LedgerBackend
from jobs.tasks_compat import (
    TASK_MAX_PRIORITY,
    TASK_MIN_PRIORITY,
    InvalidTask,
    Task,
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    default_task_backend,
    task,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from jobs.worker import run_job
from nextevent.redis import get_redis, queue_key
from tests import thirdparty_tasks as tp

pytestmark = pytest.mark.django_db(transaction=True)


def depth(queue):
    return get_redis().llen(queue_key(queue))


def run_now(result_id) -> Job:
    """Run the job's next attempt in this process now (its backoff skipped)."""
    Job.objects.filter(pk=int(result_id), state__in=[JobState.SCHEDULED, JobState.RETRY]).update(
        state=JobState.PENDING, run_at=timezone.now())
    run_job(int(result_id))
    return Job.objects.get(pk=int(result_id))


@pytest.fixture
def signals():
    received = []

    def receiver(signal_name):
        def on(sender, task_result, **kwargs):
            received.append((signal_name, sender, task_result.id, task_result.status))
        return on

    handlers = {name: receiver(name) for name in ("enqueued", "started", "finished")}
    task_enqueued.connect(handlers["enqueued"])
    task_started.connect(handlers["started"])
    task_finished.connect(handlers["finished"])
    yield received
    task_enqueued.disconnect(handlers["enqueued"])
    task_started.disconnect(handlers["started"])
    task_finished.disconnect(handlers["finished"])


# ================================================================ conformance (django-tasks)


def test_using_correct_backend():
    assert default_task_backend == task_backends["default"]
    assert isinstance(task_backends["default"], LedgerBackend)
    assert default_task_backend.alias == "default" and default_task_backend.options == {}
    assert list(default_task_backend.check()) == []


def test_task_decorator():
    for t in (tp.noop, tp.noop_async, tp.noop_from_bare_decorator):
        assert isinstance(t, Task)


@pytest.mark.parametrize("t", [tp.noop, tp.noop_async], ids=["sync", "async"])
def test_enqueue_task(t, signals):
    result = t.enqueue(1, two=3)

    assert result.status == TaskResultStatus.READY and not result.is_finished
    assert result.started_at is None and result.last_attempted_at is None and result.finished_at is None
    assert result.enqueued_at is not None
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018
    assert result.task == t and result.args == [1] and result.kwargs == {"two": 3}
    assert result.attempts == 0 and result.backend == "default"
    assert signals == [("enqueued", LedgerBackend, result.id, TaskResultStatus.READY)]
    # Stronger than the backport: the result id is a ledger job, pending on its queue.
    job = Job.objects.get(pk=int(result.id))
    assert (job.job_type, job.state, job.queue, job.timeout, job.max_retries) == (
        TASKS_RUN, JobState.PENDING, "default", 300, 3)
    assert job.payload["task"] == t.module_path and job.subject == t.module_path[-64:]
    assert depth("default") == 1


def test_enqueue_task_async():
    result = async_to_sync(tp.noop.aenqueue)()
    assert result.status == TaskResultStatus.READY and result.args == [] and result.kwargs == {}
    assert Job.objects.filter(pk=int(result.id), job_type=TASKS_RUN).exists()


def test_enqueue_with_invalid_argument_names_it_and_writes_nothing():
    with pytest.raises(TypeError, match=r"args\[0\]: Unsupported type: <class 'datetime.datetime'>"):
        tp.noop.enqueue(datetime.now())
    with pytest.raises(TypeError, match=r"kwargs\['when'\]\[1\]: Unsupported type: <class 'object'>"):
        tp.noop.enqueue(when=[1, object()])
    with pytest.raises(TypeError, match=r"kwargs\['m'\]: keys must be strings .* got 1"):
        tp.noop.enqueue(m={1: "a"})
    with pytest.raises(TypeError, match=r"args\[0\]: nan is not a JSON number"):
        tp.noop.enqueue(math.nan)
    with pytest.raises(TypeError, match=r"args\[0\]: Unsupported type"):
        async_to_sync(tp.noop.aenqueue)({1, 2})
    assert Job.objects.count() == 0 and depth("default") == 0


def test_enqueue_with_arguments_the_function_cannot_take_is_refused():
    with pytest.raises(TypeError, match=r"tests.thirdparty_tasks.add: arguments do not match its signature: "
                                        r"missing a required argument: 'b'"):
        tp.add.enqueue(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        tp.add.enqueue(1, 2, c=3)
    assert Job.objects.count() == 0


def test_enqueue_of_too_much_data_is_refused():
    with pytest.raises(ValueError, match=r"args/kwargs: \d+ bytes of JSON .* at most 16384 \(pass ids, not data\)"):
        tp.noop.enqueue("x" * 20_000)
    assert Job.objects.count() == 0


def test_using_creates_new_instances():
    now = timezone.now()
    assert tp.noop.using(priority=1).priority == 1 and tp.noop.priority == 0
    assert tp.noop.using(queue_name="wechat").queue_name == "wechat" and tp.noop.queue_name == "default"
    assert tp.noop.using(run_after=now).run_after == now and tp.noop.run_after is None
    chained = tp.noop.using(run_after=now).using(priority=10)
    assert chained.priority == 10 and chained.run_after == now


def test_naive_run_after_is_refused():
    with pytest.raises(InvalidTask, match="run_after must be an aware datetime"):
        tp.noop.using(run_after=datetime.now())


@pytest.mark.parametrize("priority", [-101, 101, 3.1])
def test_invalid_priority(priority):
    with pytest.raises(InvalidTask, match=f"priority must be a whole number between {TASK_MIN_PRIORITY} "
                                          f"and {TASK_MAX_PRIORITY}"):
        tp.noop.using(priority=priority)


def test_valid_priorities():
    for priority in (100, -100, 0):
        tp.noop.using(priority=priority)


def test_unknown_queue_name_is_refused_naming_the_engine_queues():
    with pytest.raises(InvalidTask, match=r"Queue 'queue-2' is not valid for backend: queue_name must be one of "
                                          r"critical, news, wechat, analytics, default \(jobs.queues.QUEUES\)"):
        tp.noop.using(queue_name="queue-2")


def test_validate_on_enqueue():
    on_news = tp.noop.using(queue_name="news")
    with override_settings(TASKS={"default": {"BACKEND": "jobs.tasks_backend.LedgerBackend",
                                              "QUEUES": ["default"]}}):
        with pytest.raises(InvalidTask, match="Queue 'news' is not valid for backend: queue_name must be one of "
                                              r"default \("):
            on_news.enqueue()
    assert Job.objects.count() == 0


def test_a_backend_configured_with_a_queue_that_has_no_cluster_stops_at_start():
    with override_settings(TASKS={"default": {"BACKEND": "jobs.tasks_backend.LedgerBackend",
                                              "QUEUES": ["default", "emails"]}}):
        with pytest.raises(ImproperlyConfigured, match=r"TASKS\['default'\]\['QUEUES'\]: unknown queue\(s\) emails"):
            task_backends["default"]


def test_get_result():
    result = default_task_backend.enqueue(tp.noop, (), {})
    assert tp.noop.get_result(result.id) == result
    # The Task comes back as it was enqueued: priority, queue_name, run_after, arguments.
    deferred = tp.noop.using(priority=7, queue_name="news", run_after=timezone.now() + timedelta(minutes=5))
    result = deferred.enqueue(1, [2, 3], four={"five": None})
    assert tp.noop.get_result(result.id) == result and result.task == deferred
    assert default_task_backend.get_result(result.id) == result
    assert async_to_sync(tp.noop.aget_result)(result.id) == result


def test_get_missing_or_malformed_result():
    with pytest.raises(TaskResultDoesNotExist):
        tp.noop.get_result("123")
    with pytest.raises(TaskResultDoesNotExist, match="task result ids are job ids"):
        tp.noop.get_result("5b3f0c1e-uuid")
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(tp.noop.aget_result)("123")


def test_get_incorrect_result():
    result = default_task_backend.enqueue(tp.noop_async, (), {})
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        tp.noop.get_result(result.id)


def test_a_job_that_is_not_a_task_has_no_task_result():
    from jobs import scheduler
    from jobs.system import SYSTEM_NOOP

    job_id = scheduler.enqueue(SYSTEM_NOOP, {})
    with pytest.raises(TaskResultDoesNotExist, match=f"job {job_id} is a system:noop job, not a task"):
        default_task_backend.get_result(str(job_id))


def test_invalid_function():
    def local():
        return None

    for invalid in (any, local):
        with pytest.raises(InvalidTask, match="Task function must be defined at a module level"):
            task()(invalid)


def test_takes_context_without_taking_context():
    with pytest.raises(InvalidTask, match="Task takes context but does not have a first argument of 'context'"):
        task(takes_context=True)(tp.meaning_of_life.func)


def test_refresh_and_result(signals):
    result = tp.meaning_of_life.enqueue()
    snapshot = dataclasses.asdict(result)
    result.refresh()
    assert dataclasses.asdict(result) == snapshot  # nothing ran yet

    run_now(result.id)
    assert result.status == TaskResultStatus.READY  # a result is a snapshot until refreshed
    async_to_sync(result.arefresh)()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.is_finished
    assert result.return_value == 42 and result.attempts == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert [s[0] for s in signals] == ["enqueued", "started", "finished"]
    assert signals[1][3] == TaskResultStatus.RUNNING and signals[2][3] == TaskResultStatus.SUCCESSFUL
    assert Job.objects.get(pk=int(result.id)).result == "42"  # the JSON of the return value


def test_a_json_return_value_comes_back_as_json():
    result = tp.add.enqueue(2, b=3)
    run_now(result.id)
    got = tp.add.get_result(result.id)
    assert got.return_value == {"sum": 5, "inputs": [2, 3]} and got.args == [2] and got.kwargs == {"b": 3}


def test_an_async_task_runs():
    result = tp.noop_async.enqueue()
    run_now(result.id)
    assert tp.noop_async.get_result(result.id).return_value == "async ran"


def test_catches_exception_retries_then_fails_with_every_error(signals):
    result = tp.failing_value_error.enqueue()
    job = run_now(result.id)
    # Stronger than the backport: a failed attempt is retried with backoff (3 retries).
    assert job.state == JobState.RETRY
    result.refresh()
    assert result.status == TaskResultStatus.READY and len(result.errors) == 1 and result.attempts == 1
    for _ in range(3):
        job = run_now(result.id)
    assert job.state == JobState.DEAD and job.attempts == 4
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.is_finished
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert len(result.errors) == 4 and result.attempts == 4
    for error in result.errors:
        assert error.exception_class is ValueError
        assert error.traceback.endswith("ValueError: This task failed due to ValueError\n"), error.traceback
    assert result.enqueued_at <= result.started_at <= result.finished_at
    # task_finished once, when the failure is final (not for each retried attempt)
    assert [s[0] for s in signals].count("finished") == 1 and signals[-1][3] == TaskResultStatus.FAILED


def test_system_exit_is_a_failed_attempt_not_a_lost_worker():
    result = tp.failing_system_exit.enqueue()
    job = run_now(result.id)
    assert job.state == JobState.RETRY
    error = tp.failing_system_exit.get_result(result.id).errors[0]
    assert error.exception_class is SystemExit
    assert error.traceback.endswith("SystemExit: This task failed due to SystemExit\n")


def test_complex_exception():
    result = tp.complex_exception.enqueue()
    run_now(result.id)
    error = tp.complex_exception.get_result(result.id).errors[0]
    assert error.exception_class is ValueError
    assert 'ValueError(ValueError("This task failed"))' in error.traceback


def test_complex_return_value_is_dead_at_once_naming_the_type():
    result = tp.complex_return_value.enqueue()
    job = run_now(result.id)
    # The backport records a TypeError; here it is a PermanentError (retrying returns the same).
    assert job.state == JobState.DEAD and job.attempts == 1
    got = tp.complex_return_value.get_result(result.id)
    assert got.status == TaskResultStatus.FAILED
    assert got.errors[0].exception_class.__name__ == "PermanentError"
    assert "return value: Unsupported type: <class 'function'>" in got.errors[0].traceback


def test_a_return_value_too_large_for_the_ledger_is_refused_not_cut():
    result = tp.huge_return_value.enqueue(20_000)
    job = run_now(result.id)
    assert job.state == JobState.DEAD and job.result == ""
    assert "return value: 20002 characters of JSON; at most 16000" in job.last_error
    ok = tp.huge_return_value.enqueue(15_000)
    run_now(ok.id)
    assert len(tp.huge_return_value.get_result(ok.id).return_value) == 15_000


def test_takes_context():
    result = tp.get_task_id.enqueue()
    run_now(result.id)
    assert tp.get_task_id.get_result(result.id).return_value == result.id


def test_context_attempt_counts_the_engine_attempts():
    result = tp.flaky.enqueue(fail_attempts=1)
    assert run_now(result.id).state == JobState.RETRY
    assert run_now(result.id).state == JobState.COMPLETED
    got = tp.flaky.get_result(result.id)
    assert got.return_value == {"attempt": 2, "id": result.id} and got.attempts == 2
    assert len(got.errors) == 1 and "flaky: attempt 1 of 1 fails" in got.errors[0].traceback
    assert len(got.worker_ids) == 2 and all(w for w in got.worker_ids)


def test_enqueue_writes_the_row_in_the_transaction_and_wakes_the_worker_on_commit():
    with transaction.atomic():
        result = tp.noop.enqueue()
        assert Job.objects.filter(pk=int(result.id)).exists() and depth("default") == 0
    assert depth("default") == 1


def test_a_rolled_back_enqueue_leaves_nothing():
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            tp.noop.enqueue()
            raise RuntimeError("the view failed")
    assert Job.objects.count() == 0 and depth("default") == 0


# ================================================================ run_after and priority


def test_run_after_is_the_jobs_run_at_and_waits_in_the_ledger():
    later = timezone.now() + timedelta(hours=10)
    result = tp.noop.using(run_after=later).enqueue()
    job = Job.objects.get(pk=int(result.id))
    assert job.state == JobState.SCHEDULED and job.run_at == later and depth("default") == 0
    assert result.status == TaskResultStatus.READY
    assert tp.noop.get_result(result.id).task.run_after == later


def test_run_after_in_the_past_runs_now():
    result = tp.noop.using(run_after=timezone.now() - timedelta(hours=2)).enqueue()
    assert Job.objects.get(pk=int(result.id)).state == JobState.PENDING and depth("default") == 1


@pytest.mark.parametrize("priority, queue", [(100, "critical"), (50, "critical"), (49, "default"),
                                              (0, "default"), (-100, "default")])
def test_priority_from_50_runs_on_the_critical_queue(priority, queue):
    result = tp.noop.using(priority=priority).enqueue()
    job = Job.objects.get(pk=int(result.id))
    assert job.queue == queue and depth(queue) == 1
    got = tp.noop.get_result(result.id)
    assert got.task.priority == priority and got.task.queue_name == "default"  # as enqueued


def test_priority_below_the_threshold_keeps_the_tasks_queue():
    assert Job.objects.get(pk=int(tp.on_news_queue.enqueue().id)).queue == "news"
    assert Job.objects.get(pk=int(tp.on_news_queue.using(priority=80).enqueue().id)).queue == "critical"
    assert Job.objects.get(pk=int(tp.urgent.enqueue().id)).queue == "critical"  # @task(priority=60)


def test_the_critical_threshold_is_an_option():
    options = {"default": {"BACKEND": "jobs.tasks_backend.LedgerBackend", "OPTIONS": {"CRITICAL_PRIORITY": 101}}}
    with override_settings(TASKS=options):
        result = tp.noop.using(priority=100).enqueue()
    assert Job.objects.get(pk=int(result.id)).queue == "default"
    bad = {"default": {"BACKEND": "jobs.tasks_backend.LedgerBackend", "OPTIONS": {"CRITICAL_PRIORITY": "high"}}}
    with override_settings(TASKS=bad):
        with pytest.raises(ImproperlyConfigured, match=r"CRITICAL_PRIORITY'\]: must be a whole number from -100 to "
                                                       r"101 \(never\), got 'high'"):
            task_backends["default"]


# ================================================================ only @task functions run


@pytest.mark.parametrize("path, message", [
    ("tests.thirdparty_tasks.plain_function", "'tests.thirdparty_tasks.plain_function' is not a @task function"),
    ("os.system", "'os.system' is not a @task function"),
    ("tests.no_such_module.f", "cannot import 'tests.no_such_module'"),
    ("tests.thirdparty_tasks.gone", "'tests.thirdparty_tasks.gone' is not a @task function"),
])
def test_a_job_naming_anything_but_a_task_is_dead_at_once_and_nothing_is_called(path, message):
    from jobs import scheduler

    job_id = scheduler.enqueue(TASKS_RUN, {"task": path, "args": ["marker-x"], "kwargs": {}})
    job = run_now(job_id)
    assert job.state == JobState.DEAD and job.attempts == 1 and message in job.last_error
    assert get_redis().lrange("nextevent:test:marker-x", 0, -1) == []
    with pytest.raises(TaskResultDoesNotExist, match=f"job {job_id}: task: "):
        default_task_backend.get_result(str(job_id))
