"""One structured log line per job event, as a log pipeline reads it: with LOG_FORMAT=json
each line is a JSON object carrying job id, type, queue, attempt, news id and duration;
with the plain format (DEBUG) the same facts read as key=value text."""

import json
import logging
import re
import subprocess
import sys

import pytest

from jobs import scheduler
from jobs.models import Job, JobState
from jobs.worker import run_job
from nextevent.logs import JsonFormatter
from jobs.system import SYSTEM_NOOP
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db

KEYS = {"ts", "level", "logger", "msg", "event", "job_id", "job_type", "queue", "attempt", "subject"}


def json_lines(caplog, job_id):
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "jobs.events"]
    return [line for line in lines if line["job_id"] == job_id]


def run_again(job_id):
    """What the dispatcher does when a retry is due: the row back to pending, then a wake-up."""
    Job.objects.filter(pk=job_id, state=JobState.RETRY).update(state=JobState.PENDING)
    return run_job(job_id)


def test_a_job_that_fails_once_then_completes_logs_every_event_as_a_json_line(caplog):
    caplog.set_level(logging.INFO, logger="jobs.events")
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"fail_times": 1})
    assert run_job(job_id) == "failed"
    assert run_again(job_id) == "completed"

    lines = json_lines(caplog, job_id)
    assert [line["event"] for line in lines] == ["enqueued", "started", "retried", "started", "completed"]
    for line in lines:
        assert KEYS <= set(line), line
        assert line["job_type"] == "system:noop" and line["queue"] == "default" and line["subject"] is None
        assert line["logger"] == "jobs.events"
    enqueued, started, retried, started_again, completed = lines
    assert [started["attempt"], retried["attempt"], started_again["attempt"], completed["attempt"]] == [1, 1, 2, 2]
    assert retried["level"] == "warning" and retried["error"].startswith("RuntimeError: demo failure")
    assert isinstance(retried["duration_ms"], int) and retried["duration_ms"] >= 0
    assert isinstance(completed["duration_ms"], int) and completed["duration_ms"] >= 0
    assert isinstance(started["lateness_ms"], int)


def test_a_dead_job_logs_an_error_line_with_its_subject_and_duration(caplog):
    from news.factories import NewsFactory

    caplog.set_level(logging.INFO, logger="jobs.events")
    news = NewsFactory()
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"fail_times": 1, "permanent": True})
    Job.objects.filter(pk=job_id).update(subject=f"news:{news.pk}")
    assert run_job(job_id) == "dead"

    dead = [line for line in json_lines(caplog, job_id) if line["event"] == "dead"]
    assert len(dead) == 1
    assert dead[0]["level"] == "error" and dead[0]["subject"] == f"news:{news.pk}" and dead[0]["attempt"] == 1
    assert dead[0]["permanent"] is True and isinstance(dead[0]["duration_ms"], int)


RUN_ONE = """
from jobs import scheduler
from jobs.system import SYSTEM_NOOP
from jobs.worker import run_job
print("job", run_job(scheduler.enqueue(SYSTEM_NOOP, {})))
"""


@pytest.mark.django_db(transaction=True)
def test_the_plain_format_reads_as_key_value_text(cluster_env):
    # A real process with LOG_FORMAT=plain: the project's own logging configuration formats
    # the line, not a formatter built here.
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", RUN_ONE], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**cluster_env, "LOG_FORMAT": "plain", "LOG_LEVEL": "INFO"})
    assert result.returncode == 0, result.stderr
    job_id = Job.objects.get().pk
    completed = [line for line in result.stderr.splitlines() if " INFO jobs.events job completed " in line]
    assert len(completed) == 1, result.stderr
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO jobs.events job completed ", completed[0])
    assert f"job_id={job_id} job_type=system:noop queue=default attempt=1 duration_ms=" in completed[0]
    assert not any(line.lstrip().startswith("{") for line in result.stderr.splitlines())
