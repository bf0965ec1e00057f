"""One way to declare work: a @task function with the engine's policy (@job_type above
@task: timeout, max retries, a unique key over its arguments). Real database and Redis;
jobs run in this process with jobs.worker.run_job."""

from __future__ import annotations

import pytest
from django_q.signing import SignedPackage

from jobs import registry, scheduler
from jobs.models import Job, JobState
from jobs.registry import RegistryError, job_type
from jobs.tasks_backend import TASKS_RUN, run_task_job
from jobs.tasks_compat import TaskResultStatus, task
from nextevent.redis import get_redis, queue_key
from tests import declared_tasks as dt
from tests import thirdparty_tasks as tp
from tests.test_tasks_backend import run_now

pytestmark = pytest.mark.django_db(transaction=True)


def wake_ups(queue):
    return [SignedPackage.loads(p) for p in get_redis().lrange(queue_key(queue), 0, -1)]


def test_a_declared_task_is_a_job_type_with_its_policy():
    jt = registry.job_types()["reports:build"]
    assert (jt.queue, jt.timeout, jt.max_retries, jt.task_path, jt.handler) == (
        "default", 120, 5, "tests.declared_tasks.build_report", run_task_job)
    assert jt.description == "Build a report (at most one live job per report)."
    assert isinstance(dt.build_report, type(tp.noop))  # still the Task: .enqueue(), .call()


def test_its_jobs_carry_its_name_timeout_retries_and_subject():
    result = dt.build_report.enqueue(7)
    job = Job.objects.get(pk=int(result.id))
    assert (job.job_type, job.queue, job.timeout, job.max_retries, job.subject) == (
        "reports:build", "default", 120, 5, "report:7")
    assert job.unique_key == "reports:build:7" and job.live_key == "reports:build:7"
    (wake_up,) = wake_ups("default")
    assert wake_up["args"] == (job.pk,) and wake_up["timeout"] == 120  # django-q2 enforces it


def test_the_unique_key_keeps_one_live_job_per_report_whatever_the_call_style():
    first = dt.build_report.enqueue(7)
    again = dt.build_report.enqueue(report_id=7, fmt="csv")  # same report by keyword: moved
    other = dt.build_report.enqueue(8)
    assert again.id == first.id and other.id != first.id
    assert Job.objects.filter(job_type="reports:build").count() == 2
    moved = dt.build_report.get_result(first.id)
    assert moved.args == [] and moved.kwargs == {"report_id": 7, "fmt": "csv"}
    run_now(first.id)
    assert dt.build_report.get_result(first.id).return_value == {"report_id": 7, "fmt": "csv"}
    # Finished: the key is free again, the next call is a new job.
    assert dt.build_report.enqueue(7).id != first.id


def test_cancel_unique_reaches_a_declared_task():
    result = dt.build_report.enqueue(9)
    assert scheduler.cancel_unique("reports:build:9")
    got = dt.build_report.get_result(result.id)
    assert got.status == TaskResultStatus.FAILED and got.errors == []
    assert Job.objects.get(pk=int(result.id)).state == JobState.CANCELLED


def test_a_permanent_error_in_a_task_is_dead_at_once():
    result = dt.refuse_report.enqueue(5)
    job = run_now(result.id)
    assert job.state == JobState.DEAD and job.attempts == 1
    error = dt.refuse_report.get_result(result.id).errors[0]
    assert error.exception_class.__name__ == "PermanentError" and "report 5 does not exist" in error.traceback


def test_snooze_in_a_task_waits_without_spending_a_retry():
    result = dt.wait_for_quota.enqueue()
    job = run_now(result.id)
    assert job.state == JobState.SCHEDULED and job.attempts == 0
    assert job.waiting_reason == "the partner's daily quota is used up"
    assert dt.wait_for_quota.get_result(result.id).status == TaskResultStatus.READY


def test_a_declared_types_job_naming_another_task_is_refused():
    job_id = scheduler.enqueue("reports:build", {"task": tp.meaning_of_life.module_path, "args": [], "kwargs": {}})
    job = run_now(job_id)
    assert job.state == JobState.DEAD
    assert "a reports:build job runs tests.declared_tasks.build_report, not 'tests.thirdparty_tasks." in job.last_error


def test_an_undeclared_task_is_a_tasks_run_job():
    assert Job.objects.get(pk=int(tp.add.enqueue(1, 2).id)).job_type == TASKS_RUN


# ---------------------------------------------------------------- declaration mistakes


def report_a(report_id: int) -> None:
    return None


def report_b(report_id: int) -> None:
    return None


def report_c(report_id: int) -> None:
    return None


@pytest.mark.parametrize("policy, message", [
    ({"unique_key": "{report}"}, "unique_key '{report}' names 'report', which is not an argument of "
                                 "tests.test_tasks_declared.report_a (arguments: report_id)"),
    ({"subject": "r:{id}"}, "subject 'r:{id}' names 'id', which is not an argument"),
    ({"unique_key": "{report_id[0]}"}, "use plain argument names in braces, got {report_id[0]}"),
    ({"unique_key": "{report_id"}, "is not a format string"),
    ({"queue": "news"}, "the queue comes from @task(queue_name=...), which is 'default'; do not give queue='news'"),
    ({"payload": object}, "payload= is not used with a @task: its arguments are the payload"),
    ({"timeout": 0}, "timeout must be whole seconds from 1 to 600, got 0"),
    ({"max_retries": 26}, "max_retries must be 0 to 25, got 26"),
])
def test_a_wrong_declaration_stops_start_up_naming_it(policy, message):
    with pytest.raises(RegistryError, match=r"job type 'test:mistake'.*" + _re(message)):
        job_type("test:mistake", **{"timeout": 10, **policy})(task()(report_a))
    assert "test:mistake" not in registry.job_types()


def test_a_task_declared_twice_or_a_name_taken_twice_is_refused():
    job_type("test:report_b", timeout=10)(task()(report_b))
    with pytest.raises(RegistryError, match=r"task tests.test_tasks_declared.report_b is declared twice: "
                                            r"as 'test:report_b' and as 'test:report_b2'"):
        job_type("test:report_b2", timeout=10)(task()(report_b))
    with pytest.raises(RegistryError, match=r"job type 'test:report_b' is declared twice: by "
                                            r"tests.test_tasks_declared.report_b and by "
                                            r"tests.test_tasks_declared.report_c"):
        job_type("test:report_b", timeout=10)(task()(report_c))


def test_job_type_below_task_or_a_unique_key_on_a_handler_says_what_to_do():
    with pytest.raises(RegistryError, match=r"payload= is required for a handler\(payload, job\); to declare a "
                                            r"@task, put @job_type above @task"):
        job_type("test:upside_down", timeout=10)(report_c)
    with pytest.raises(RegistryError, match="unique_key= is for @task declarations"):
        job_type("test:handler_key", timeout=10, payload=object, unique_key="{x}")(report_c)


def _re(text: str) -> str:
    import re

    return re.escape(text)
