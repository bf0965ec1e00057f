"""enqueue() writes its ledger row with a plain INSERT: the row must be exactly
what Job.objects.create would have written."""

from datetime import timedelta

import pytest
from django.db import IntegrityError
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.services.creating import insert_job

pytestmark = pytest.mark.django_db(transaction=True)


def fields(**overrides) -> dict:
    run_at = timezone.now() + timedelta(minutes=5)
    return {"job_type": "system:noop", "queue": "default", "payload": {"marker": "naïve ☃ \"q\"", "sleep": 0.5},
            "max_retries": 2, "timeout": 30, "run_at": run_at, "subject": "item:9",
            "state": JobState.SCHEDULED, "dispatched_at": None, "unique_key": "k:9", "live_key": "k:9",
            **overrides}


def test_the_plain_insert_writes_what_the_orm_writes():
    before = timezone.now()
    values = fields()
    fast = Job(**values)
    insert_job(fast)
    assert fast.pk and fast._state.adding is False
    orm = Job.objects.create(**{**values, "unique_key": "k:10", "live_key": "k:10"})
    a, b = Job.objects.get(pk=fast.pk), Job.objects.get(pk=orm.pk)
    for field in Job._meta.concrete_fields:
        if field.name in ("id", "created_at", "unique_key", "live_key"):
            continue
        assert getattr(a, field.attname) == getattr(b, field.attname), field.name
    assert a.unique_key == a.live_key == "k:9"
    assert before <= a.created_at <= timezone.now() and fast.created_at == a.created_at


def test_a_second_live_job_with_the_same_key_is_refused_as_django_s_integrity_error():
    insert_job(Job(**fields()))
    with pytest.raises(IntegrityError):
        insert_job(Job(**fields()))
