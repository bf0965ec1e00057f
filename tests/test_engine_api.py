"""The engine's public API on the real database and Redis, without workers: validation,
enqueue-on-commit, unique keys, cancel, and people's actions."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from jobs import scheduler, services
from jobs.errors import PayloadError, UnknownJobType
from jobs.models import Job, JobState
from nextevent.redis import get_redis, queue_key
from jobs.system import SYSTEM_NOOP
from news.scheduling import NEWS_SCHEDULED_PUBLISHER, news_publish_key, schedule_news_publishing, unschedule_news_publishing

pytestmark = pytest.mark.django_db(transaction=True)


def depth(queue):
    return get_redis().llen(queue_key(queue))


def test_an_unknown_job_type_is_refused_naming_it():
    with pytest.raises(UnknownJobType, match="job_type: unknown job type 'news:nope'"):
        scheduler.enqueue("news:nope", {})
    assert Job.objects.count() == 0


@pytest.mark.parametrize("payload,field", [
    ({"scheduled_at": "2030-01-01T00:00:00+00:00"}, "news_id"),
    ({"news_id": "7", "scheduled_at": "2030-01-01T00:00:00+00:00"}, "news_id"),
    ({"news_id": -3, "scheduled_at": "2030-01-01T00:00:00+00:00"}, "news_id"),
    ({"news_id": 7, "scheduled_at": "tomorrow"}, "scheduled_at"),
    ({"news_id": 7, "scheduled_at": "2030-01-01T00:00:00"}, "scheduled_at"),
    ({"news_id": 7, "scheduled_at": "2030-01-01T00:00:00+00:00", "colour": "red"}, "colour"),
])
def test_a_malformed_payload_is_refused_naming_the_field(payload, field):
    with pytest.raises(PayloadError) as err:
        scheduler.enqueue(NEWS_SCHEDULED_PUBLISHER, payload)
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")
    assert Job.objects.count() == 0


def test_enqueue_many_names_the_index_of_a_bad_payload():
    with pytest.raises(PayloadError, match=r"payloads\[1\]\.sleep"):
        scheduler.enqueue_many(SYSTEM_NOOP, [{}, {"sleep": "long"}])
    assert Job.objects.count() == 0


def test_a_job_due_now_is_pushed_only_when_the_transaction_commits():
    with transaction.atomic():
        job_id = scheduler.enqueue(SYSTEM_NOOP, {})
        assert depth("default") == 0
    assert depth("default") == 1
    job = Job.objects.get(pk=job_id)
    assert job.state == JobState.PENDING and job.queue == "default" and job.timeout == 60


def test_nothing_is_written_or_pushed_when_the_transaction_rolls_back():
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            scheduler.enqueue(SYSTEM_NOOP, {})
            raise RuntimeError("caller failed")
    assert Job.objects.count() == 0 and depth("default") == 0


def test_a_future_job_waits_in_the_ledger_not_in_redis():
    job_id = scheduler.enqueue(SYSTEM_NOOP, {}, delay=60)
    job = Job.objects.get(pk=job_id)
    assert job.state == JobState.SCHEDULED and depth("default") == 0
    assert timedelta(seconds=59) < job.run_at - timezone.now() <= timedelta(seconds=60)


def test_one_live_publishing_job_per_news_item_rescheduling_moves_it():
    first = timezone.now() + timedelta(hours=1)
    second = first + timedelta(hours=2)
    a = schedule_news_publishing(41, first)
    b = schedule_news_publishing(41, second)
    assert a == b
    job = Job.objects.get(pk=a)
    assert job.run_at == second and job.payload["scheduled_at"] == second.isoformat()
    assert Job.objects.filter(subject="news:41").count() == 1


def test_rescheduling_to_now_pushes_the_moved_job():
    job_id = schedule_news_publishing(42, timezone.now() + timedelta(hours=1))
    assert depth("news") == 0
    assert schedule_news_publishing(42, timezone.now()) == job_id
    assert Job.objects.get(pk=job_id).state == JobState.PENDING and depth("news") == 1


def test_unscheduling_cancels_and_frees_the_key():
    job_id = schedule_news_publishing(43, timezone.now() + timedelta(hours=1))
    assert unschedule_news_publishing(43) is True
    job = Job.objects.get(pk=job_id)
    assert job.state == JobState.CANCELLED and job.live_key is None
    assert unschedule_news_publishing(43) is False
    assert schedule_news_publishing(43, timezone.now() + timedelta(hours=1)) != job_id


def test_a_running_job_gives_its_key_to_a_rescheduled_successor():
    job_id = schedule_news_publishing(44, timezone.now())
    claimed = services.job_claim(job_id, worker="test:1")
    new_id = schedule_news_publishing(44, timezone.now() + timedelta(hours=1))
    assert new_id != job_id
    running = Job.objects.get(pk=job_id)  # the row, not the claim's in-memory copy
    assert (running.live_key, running.state, running.worker) == (None, JobState.ACTIVE, "test:1")
    assert claimed.attempts == running.attempts == 1
    assert Job.objects.get(pk=new_id).live_key == news_publish_key(44)


def test_a_claim_is_won_once():
    job_id = scheduler.enqueue(SYSTEM_NOOP, {})
    assert services.job_claim(job_id, worker="a:1") is not None
    assert services.job_claim(job_id, worker="b:2") is None
    job = Job.objects.get(pk=job_id)
    assert job.attempts == 1 and job.worker == "a:1"


def test_backoff_doubles_from_one_second_to_sixteen():
    assert [services.backoff_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 16, 16]


def test_retry_now_revives_a_dead_job_with_attempts_reset():
    job_id = scheduler.enqueue(SYSTEM_NOOP, {})
    job = services.job_claim(job_id, worker="t:1")
    services.job_fail(job, error="boom", permanent=True)
    assert Job.objects.get(pk=job_id).state == JobState.DEAD
    get_redis().delete(queue_key("default"))
    assert services.jobs_retry_now([job_id]) == 1
    job = Job.objects.get(pk=job_id)
    assert (job.state, job.attempts, job.finished_at) == (JobState.PENDING, 0, None)
    assert depth("default") == 1
    assert services.jobs_retry_now([job_id]) == 0  # pending now: nothing to retry


def test_cancel_asks_a_running_job_to_stop_and_delete_leaves_it_alone():
    waiting = scheduler.enqueue(SYSTEM_NOOP, {}, delay=60)
    running = scheduler.enqueue(SYSTEM_NOOP, {})
    services.job_claim(running, worker="t:1")
    assert services.jobs_cancel([waiting, running]) == 2  # the running one is asked, not moved
    assert Job.objects.get(pk=running).cancel_requested_at is not None
    assert services.jobs_delete([waiting, running]) == 1
    assert list(Job.objects.values_list("pk", "state")) == [(running, JobState.ACTIVE)]


def test_a_bad_timeout_override_is_refused():
    with pytest.raises(ValueError, match="timeout: must be whole seconds from 1 to 600"):
        scheduler.enqueue(SYSTEM_NOOP, {}, timeout=0)


def test_enqueue_many_writes_every_row_with_its_type_s_policy_and_pushes_the_due_ones_on_commit():
    with transaction.atomic():
        ids = scheduler.enqueue_many(SYSTEM_NOOP, [{"marker": "a"}, {"marker": "b", "sleep": 1}])
        assert depth("default") == 0  # only after the commit
    assert depth("default") == 2
    rows = list(Job.objects.filter(pk__in=ids).order_by("pk"))
    assert [r.payload for r in rows] == [
        {"sleep": 0.0, "fail_times": 0, "permanent": False, "marker": "a", "crash_times": 0, "cooperative": False,
         "retry_after": 0.0},
        {"sleep": 1.0, "fail_times": 0, "permanent": False, "marker": "b", "crash_times": 0, "cooperative": False,
         "retry_after": 0.0}]
    for r in rows:
        assert (r.job_type, r.queue, r.state, r.timeout, r.max_retries, r.attempts, r.subject) == (
            SYSTEM_NOOP, "default", JobState.PENDING, 60, 3, 0, "")
        assert r.dispatched_at is not None and r.run_at <= timezone.now()

    later = scheduler.enqueue_many(SYSTEM_NOOP, [{}], delay=60)
    job = Job.objects.get(pk=later[0])
    assert (job.state, job.dispatched_at) == (JobState.SCHEDULED, None) and depth("default") == 2
    assert timedelta(seconds=59) < job.run_at - timezone.now() <= timedelta(seconds=60)


def test_enqueue_many_refuses_more_than_its_limit_before_writing():
    from jobs.services.creating import MAX_MANY

    assert scheduler.enqueue_many(SYSTEM_NOOP, []) == []
    with pytest.raises(ValueError, match=f"payloads: at most {MAX_MANY} per call, got {MAX_MANY + 1}"):
        scheduler.enqueue_many(SYSTEM_NOOP, [{}] * (MAX_MANY + 1))
    assert Job.objects.count() == 0
