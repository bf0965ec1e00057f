"""The job-type registry (jobs/registry.py): apps declare their types by keyword, mistakes stop
start-up with a clear error, the engine runs what is declared and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import registry, scheduler, services
from jobs.errors import Snooze, UnknownJobType
from jobs.models import Job, JobState
from jobs.payloads import Payload
from jobs.registry import RegistryError, job_type, register
from jobs.worker import run_job


@dataclass
class ProbePayload(Payload):
    item_id: int
    reason: str = ""


def _handler(payload, job):
    if payload.reason == "snooze":
        raise Snooze(timezone.now() + timedelta(hours=1), "waiting for the partner's daily quota")
    if payload.reason == "fail":
        raise RuntimeError("the partner said no")
    return "ok"


register("test:probe", queue="default", timeout=30, max_retries=2, payload=ProbePayload, handler=_handler,
         subject="item:{item_id}")


def test_the_seed_types_are_declared_by_their_apps_with_their_policies():
    declared = {name: (jt.queue, jt.timeout, jt.max_retries, jt.handler.__module__)
                for name, jt in registry.job_types().items()}
    assert declared["news:scheduled_publisher"] == ("news", 60, 3, "news.jobs")
    assert declared["news:expiration"] == ("news", 60, 3, "news.jobs")
    assert declared["wechat:draft_creation"] == ("wechat", 300, 3, "wechat.jobs")
    assert declared["wechat:publishing"] == ("wechat", 300, 3, "wechat.jobs")
    assert declared["news:analytics"] == ("analytics", 300, 3, "analytics.jobs")
    assert declared["system:periodic"][:3] == ("critical", 600, 3)
    assert declared["system:noop"][:3] == ("default", 60, 3)


def test_the_periodic_table_is_declared_by_the_apps():
    table = {p.name: (p.cron, p.queue, p.func) for p in registry.periodic_table()}
    assert table == {
        "news_publish_sweep": ("* * * * *", "news", "news.jobs.news_publish_sweep"),
        "news_archive_sweep": ("0 * * * *", "news", "news.jobs.news_archive_sweep"),
        "analytics_batch": ("*/5 * * * *", "analytics", "analytics.jobs.analytics_enqueue_batch"),
        "health_check": ("* * * * * */30", "critical", "jobs.health.health_check"),
        "cleanup": ("0 2 * * *", "default", "jobs.maintenance.cleanup"),
    }


def test_an_undeclared_type_is_refused_at_enqueue_naming_the_known_ones():
    with pytest.raises(UnknownJobType, match=r"job_type: unknown job type 'news:gone'; known: .*news:expiration"):
        scheduler.enqueue("news:gone", {"news_id": 1})


def test_a_type_declared_twice_stops_start_up_naming_both():
    def other(payload, job):
        return None

    with pytest.raises(RegistryError, match=r"job type 'test:probe' is declared twice: by .*_handler and by .*other"):
        register("test:probe", queue="default", timeout=30, payload=ProbePayload, handler=other)


@pytest.mark.parametrize("policy, message", [
    ({"queue": "urgent"}, "unknown queue 'urgent'; known: critical, news, wechat, analytics, default"),
    ({"timeout": 0}, "timeout must be whole seconds from 1 to 600, got 0"),
    ({"timeout": 601}, "timeout must be whole seconds from 1 to 600, got 601"),
    ({"timeout": 1.5}, "timeout must be whole seconds from 1 to 600, got 1.5"),
    ({"max_retries": -1}, "max_retries must be 0 to 25, got -1"),
    ({"payload": dict}, "payload must be a jobs.payloads.Payload dataclass"),
])
def test_a_bad_policy_stops_start_up_with_a_clear_error(policy, message):
    declaration = {"queue": "default", "timeout": 30, "max_retries": 3, "payload": ProbePayload, **policy}
    with pytest.raises(RegistryError) as caught:
        job_type("test:bad", **declaration)(_handler)
    assert f"job type 'test:bad': {message}" in str(caught.value)
    assert "test:bad" not in registry.job_types()


def test_a_policy_is_stated_by_keyword_not_by_position():
    with pytest.raises(TypeError):
        job_type("test:positional", "default", 30, 3, ProbePayload)  # noqa: the point of the test


def test_a_bad_name_or_periodic_declaration_stops_start_up():
    with pytest.raises(RegistryError, match="name must be '<app>:<action>'"):
        job_type("noprefix", queue="default", timeout=30, payload=ProbePayload)(_handler)
    with pytest.raises(RegistryError, match="periodic task 'x': invalid cron expression 'every day'"):
        registry.periodic("x", cron="every day", queue="default")(_handler)
    with pytest.raises(RegistryError, match="periodic task 'x': unknown queue 'later'"):
        registry.periodic("x", cron="* * * * *", queue="later")(_handler)


@pytest.mark.django_db
def test_a_job_gets_its_subject_from_its_type():
    job = Job.objects.get(pk=scheduler.enqueue("test:probe", {"item_id": 42}))
    assert job.subject == "item:42"


@pytest.mark.django_db
def test_a_healthy_snooze_shows_its_reason_apart_from_errors():
    job_id = scheduler.enqueue("test:probe", {"item_id": 1, "reason": "snooze"})
    assert run_job(job_id) == "snoozed"
    job = Job.objects.get(pk=job_id)
    assert job.state == JobState.SCHEDULED and job.attempts == 0
    assert job.waiting_reason == "waiting for the partner's daily quota"
    assert job.last_error == "" and job.errors == []

    # A real failure later is an error, and the job is no longer waiting for that reason.
    Job.objects.filter(pk=job_id).update(payload={"item_id": 1, "reason": "fail"}, state=JobState.PENDING,
                                         run_at=timezone.now())
    assert run_job(job_id) == "failed"
    job.refresh_from_db()
    assert job.last_error.startswith("RuntimeError: the partner said no") and job.waiting_reason == ""


@pytest.mark.django_db
def test_the_hot_path_reads_every_field_as_the_orm_does():
    run_at = timezone.now() - timedelta(seconds=3)
    job = Job.objects.create(
        job_type="test:probe", queue="default", payload={"item_id": 7, "reason": "naïve ☃ \"quoted\""},
        state=JobState.PENDING, attempts=0, max_retries=2, timeout=30, run_at=run_at, dispatched_at=run_at,
        started_at=run_at, finished_at=None, lease_expires_at=run_at + timedelta(seconds=20), worker="host:1",
        unique_key="probe:7", live_key="probe:7", subject="item:7", last_error="RuntimeError: x",
        waiting_reason="quota", errors=[{"attempt": 1, "error": "é"}], result="r")
    fast = services.fetch_job(job.pk)
    slow = Job.objects.get(pk=job.pk)
    for field in Job._meta.concrete_fields:
        assert getattr(fast, field.attname) == getattr(slow, field.attname), field.name
        assert type(getattr(fast, field.attname)) is type(getattr(slow, field.attname)), field.name
    assert fast._state.adding is False and fast._state.db == slow._state.db
