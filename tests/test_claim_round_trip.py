"""The claim and the read of the claimed row in one round trip, fenced so that a
wake-up that loses the claim reads nothing."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import services
from jobs.models import Job, JobState

pytestmark = pytest.mark.django_db(transaction=True)


def pending_job() -> Job:
    run_at = timezone.now() - timedelta(seconds=1)
    return Job.objects.create(job_type="system:noop", queue="default", payload={"sleep": 0}, state=JobState.PENDING,
                              timeout=60, run_at=run_at, dispatched_at=run_at, subject="item:1",
                              errors=[{"attempt": 0, "error": "é"}])


def test_a_claim_is_one_round_trip_and_returns_the_row_as_the_orm_reads_it():
    job = pending_job()
    services.job_claim(pending_job().pk, worker="warm:1")  # the connection's one-time set-up
    with CaptureQueriesContext(connection) as queries:
        claimed = services.job_claim(job.pk, worker="w:1")
    assert len(queries) == 1
    orm = Job.objects.get(pk=job.pk)
    assert orm.state == JobState.ACTIVE and orm.worker == "w:1" and orm.attempts == 1
    for field in Job._meta.concrete_fields:
        assert getattr(claimed, field.attname) == getattr(orm, field.attname), field.name
        assert type(getattr(claimed, field.attname)) is type(getattr(orm, field.attname)), field.name


def test_a_lost_claim_reads_nothing_even_for_the_same_worker():
    job = pending_job()
    assert services.job_claim(job.pk, worker="w:1") is not None
    assert services.job_claim(job.pk, worker="w:2") is None
    assert services.job_claim(job.pk, worker="w:1") is None  # a duplicate wake-up, same process
    assert Job.objects.get(pk=job.pk).worker == "w:1"
    # The connection is left clean: the next statement works.
    assert Job.objects.filter(pk=job.pk).count() == 1
