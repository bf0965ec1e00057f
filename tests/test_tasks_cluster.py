"""Interop: a third-party app's @task functions (tests/thirdparty_tasks.py, written against
the Tasks API alone) run end to end on a real `manage.py qcluster`, and people see them in
`manage.py jobs`, the admin and the dashboard like any other job."""

from __future__ import annotations

import json
import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.tasks_backend import TASKS_RUN
from jobs.tasks_compat import TaskResultStatus
from tests import thirdparty_tasks as tp
from tests.conftest import wait_for
from tests.ops_support import run_jobs_command

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

FINISHED = (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)


def wait_finished(task, result, timeout=60.0):
    def done():
        result.refresh()
        return result.status in FINISHED

    wait_for(done, timeout, 0.1, f"task {task.name} (job {result.id}) to finish")
    return result


def test_third_party_tasks_run_on_a_real_qcluster_and_show_up_like_any_job(start_cluster, admin_client, capsys):
    # Short backoff (0.2, 0.4, 0.5 s) so retries and the dead state are reached quickly.
    cluster = start_cluster(queues=["default", "critical"],
                            env={"JOBS_BACKOFF_BASE": "0.2", "JOBS_BACKOFF_CAP": "0.5"})
    run_after = timezone.now() + timedelta(seconds=3)
    results = {
        "add": (tp.add, tp.add.enqueue(2, b=3)),
        "later": (tp.meaning_of_life, tp.meaning_of_life.using(run_after=run_after).enqueue()),
        "flaky": (tp.flaky, tp.flaky.enqueue(fail_attempts=2)),
        "failing": (tp.failing_value_error, tp.failing_value_error.enqueue()),
        "urgent": (tp.urgent, tp.urgent.enqueue()),
        "async": (tp.noop_async, tp.noop_async.enqueue()),
    }
    for task, result in results.values():
        wait_finished(task, result)
    # Lease holders are "host:start:pid" (jobs/proctree.py).
    workers = {f"{socket.gethostname()}:{pid}" for pid in cluster.worker_pids()}

    add = results["add"][1]
    assert add.status == TaskResultStatus.SUCCESSFUL and add.return_value == {"sum": 5, "inputs": [2, 3]}
    assert add.attempts == 1 and {w.split(":")[0] + ":" + w.rsplit(":", 1)[1] for w in add.worker_ids} <= workers  # a django-q2 worker of this cluster ran it

    later = results["later"][1]
    assert later.return_value == 42
    lateness = (later.started_at - run_after).total_seconds()
    assert 0 <= lateness < 1.5, lateness  # not before run_after; the dispatcher's ~0.1 s, with slack
    with capsys.disabled():
        print(f"run_after -> started: {lateness * 1000:.0f} ms")  # the README's figure (pytest -s)

    flaky = results["flaky"][1]
    assert flaky.return_value == {"attempt": 3, "id": flaky.id} and flaky.attempts == 3
    assert [e.exception_class for e in flaky.errors] == [RuntimeError, RuntimeError]

    failing = results["failing"][1]
    assert failing.status == TaskResultStatus.FAILED and failing.attempts == 4  # 1 + 3 retries, then dead
    assert all(e.exception_class is ValueError for e in failing.errors) and len(failing.errors) == 4
    assert Job.objects.get(pk=int(failing.id)).state == JobState.DEAD

    urgent = results["urgent"][1]
    assert urgent.return_value == "urgent" and Job.objects.get(pk=int(urgent.id)).queue == "critical"
    assert results["async"][1].return_value == "async ran"

    # manage.py jobs: listed by type, shown with the task's path, arguments and errors.
    assert run_jobs_command("list", "--type", TASKS_RUN, "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {int(r.id) for _, r in results.values()} == {row["id"] for row in listed}
    assert run_jobs_command("show", failing.id) == 0
    shown = capsys.readouterr().out
    assert f"job {failing.id}  {TASKS_RUN}  [dead]" in shown
    assert "tests.thirdparty_tasks.failing_value_error" in shown
    assert "ValueError: This task failed due to ValueError" in shown
    assert run_jobs_command("list", "--state", "dead") == 0
    assert f"{failing.id}" in capsys.readouterr().out

    # The dashboard's recent failures and the admin's job pages.
    page = admin_client.get("/admin/jobs/dashboard/").content.decode()
    assert f'id="failure-{failing.id}"' in page and "tests.thirdparty_tasks.failing_value_error" in page
    changelist = admin_client.get("/admin/jobs/job/", {"job_type": TASKS_RUN}).content.decode()
    assert all(f"/admin/jobs/job/{r.id}/change/" in changelist for _, r in results.values())
    change = admin_client.get(f"/admin/jobs/job/{add.id}/change/").content.decode()
    assert "tests.thirdparty_tasks.add" in change and "{&quot;sum&quot;: 5" in change
