"""Rolling upgrades: a wake-up written by another version of the code reaches a worker.
It must be handled or end with a clear error, and never loop."""

import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Failure
from django_q.signing import SignedPackage

from jobs.models import Job, JobState
from nextevent.redis import get_redis, queue_key
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def foreign_wake_up(job_id: int, func: str) -> str:
    """A wake-up as a version whose worker entry point had another name would sign it."""
    return SignedPackage.dumps({"id": uuid.uuid4().hex, "name": f"job-{job_id}", "func": func, "args": (job_id,),
                                "kwargs": {}, "cluster": "default", "timeout": 60, "started": timezone.now()})


def test_a_wake_up_naming_a_function_this_version_lacks_fails_once_and_the_job_still_runs_once(start_cluster):
    long_ago = timezone.now() - timedelta(minutes=5)
    job = Job.objects.create(job_type="system:noop", queue="default", payload={"marker": "mixed"},
                             state=JobState.PENDING, timeout=60, run_at=long_ago, dispatched_at=long_ago)
    get_redis().rpush(queue_key("default"), foreign_wake_up(job.pk, "jobs.worker.run_job_renamed_in_v2"))
    start_cluster(queues=["default"], env={"JOBS_REPUSH_AFTER": "1"})
    # django-q2 records the unknown function as one Failure; the ledger's job stays pending and
    # the dispatcher re-pushes a wake-up of this version, which runs it.
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.COMPLETED).exists(), 60, 0.2,
             "the job to complete after the foreign wake-up")
    failures = list(Failure.objects.filter(func="jobs.worker.run_job_renamed_in_v2"))
    assert len(failures) == 1 and "run_job_renamed_in_v2" in str(failures[0].result)
    time.sleep(3)  # no loop: nothing more happens
    assert Failure.objects.filter(func="jobs.worker.run_job_renamed_in_v2").count() == 1
    assert get_redis().lrange("nextevent:noop:mixed", 0, -1) == [f"{job.pk}:1".encode()]
    assert Job.objects.get(pk=job.pk).attempts == 1
