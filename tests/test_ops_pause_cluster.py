"""Pausing a queue with `manage.py jobs pause` while a real qcluster serves it: its jobs
wait, none is lost or run, and `jobs resume` lets every one of them run."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import broker, scheduler
from jobs.models import Job, JobState
from nextevent.redis import get_redis
from tests.conftest import wait_dispatcher_pass, wait_for
from tests.ops_support import make_job, run_jobs_command
from jobs.system import SYSTEM_NOOP

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def runs(marker):
    return get_redis().lrange(f"nextevent:noop:{marker}", 0, -1)


def test_a_paused_queue_holds_its_jobs_and_runs_them_after_resume(start_cluster):
    start_cluster(queues=["default"])
    assert run_jobs_command("pause", "default") == 0
    # Every process re-reads the pause list at least once a second: a dispatcher pass begun
    # a second after the pause has seen it, and so has any claim from then on.
    wait_dispatcher_pass(timezone.now() + timedelta(seconds=1))

    # Enqueued while paused: recorded, not handed to the workers.
    held = scheduler.enqueue(SYSTEM_NOOP, {"marker": "held"})
    # Handed to Redis just before the pause took effect: the worker must put it back.
    in_flight = make_job(state=JobState.PENDING, ago=0, payload={"marker": "in-flight"})
    broker.push([(in_flight.pk, "default", 60)])

    wait_for(lambda: Job.objects.filter(pk=in_flight.pk, state=JobState.SCHEDULED).exists(), 20,
             message="the worker to put the in-flight job back")
    def handed_out():
        return list(Job.objects.filter(pk__in=[held, in_flight.pk]).order_by("pk")
                    .values_list("pk", "run_at", "dispatched_at"))

    before = handed_out()
    wait_dispatcher_pass(timezone.now())  # it looked at both jobs and left them
    # Not forwarded (and then put back by a worker) meanwhile: a forward stamps dispatched_at,
    # a put-back moves run_at.
    assert handed_out() == before
    assert set(Job.objects.filter(pk__in=[held, in_flight.pk]).values_list("state", flat=True)) == {JobState.SCHEDULED}
    assert runs("held") == [] and runs("in-flight") == []
    assert Job.objects.get(pk=in_flight.pk).attempts == 0  # a put-back does not spend an attempt

    assert run_jobs_command("resume", "default") == 0
    wait_for(lambda: Job.objects.filter(pk__in=[held, in_flight.pk], state=JobState.COMPLETED).count() == 2, 20,
             message="both jobs to run after resume")
    assert len(runs("held")) == 1 and len(runs("in-flight")) == 1
