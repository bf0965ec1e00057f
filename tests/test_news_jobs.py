"""News lifecycle jobs: saving an item keeps its publishing and expiration jobs in step,
stale jobs finish without acting and say why, and the sweeps catch what QuerySet.update()
hides from the signals. Real MariaDB and Redis; jobs are run by the real worker function
(jobs.worker.run_job) in this process, as a django-q2 worker would run them."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from jobs import broker, services
from jobs.models import Job, JobState
from jobs.worker import run_job
from news.factories import NewsFactory, PublishedNewsFactory, ScheduledNewsFactory
from news.models import News, NewsStatus
from news.services import news_publish
from tests.conftest import run_concurrently
from news.jobs import handle_news_scheduled_publisher, news_archive_sweep, news_publish_sweep
from news.scheduling import NEWS_EXPIRATION, NEWS_SCHEDULED_PUBLISHER, NewsPublishPayload

PUBLISH, EXPIRE = NEWS_SCHEDULED_PUBLISHER, NEWS_EXPIRATION


def jobs_of(news_id: int, job_type: str) -> list[Job]:
    return list(Job.objects.filter(subject=f"news:{news_id}", job_type=job_type).order_by("pk"))


def live_job(news_id: int, job_type: str) -> Job | None:
    live = [j for j in jobs_of(news_id, job_type) if j.live_key is not None]
    assert len(live) <= 1, f"more than one live {job_type} job: {live}"
    return live[0] if live else None


def run_now(job: Job) -> Job:
    """Make the job due and run it as a worker would (the dispatcher's forward + a wake-up)."""
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(state=JobState.PENDING, run_at=now, dispatched_at=now)
    run_job(job.pk)
    return Job.objects.get(pk=job.pk)


def later(**kw):
    return timezone.now() + timedelta(**kw)


def earlier(**kw):
    return timezone.now() - timedelta(**kw)


# ---------------------------------------------------------------- signals


@pytest.mark.django_db
def test_it_schedules_one_publishing_job_at_scheduled_at_when_a_scheduled_item_is_created():
    at = later(hours=2)
    news = ScheduledNewsFactory(scheduled_at=at)

    [job] = jobs_of(news.pk, PUBLISH)
    assert job.state == JobState.SCHEDULED and job.run_at == at
    assert job.live_key == f"{PUBLISH}:{news.pk}" and job.queue == "news"
    assert NewsPublishPayload.from_json(job.payload).scheduled_at == at
    assert jobs_of(news.pk, EXPIRE) == []


@pytest.mark.django_db
def test_it_moves_the_same_job_when_an_item_is_rescheduled():
    news = ScheduledNewsFactory(scheduled_at=later(hours=2))
    [job] = jobs_of(news.pk, PUBLISH)

    news.scheduled_at = new_at = later(hours=5)
    news.save()
    news.scheduled_at = newer_at = later(minutes=30)
    news.save()

    [moved] = jobs_of(news.pk, PUBLISH)
    assert moved.pk == job.pk and moved.state == JobState.SCHEDULED
    assert moved.run_at == newer_at != new_at
    assert NewsPublishPayload.from_json(moved.payload).scheduled_at == newer_at


@pytest.mark.django_db
def test_it_cancels_the_publishing_job_when_an_item_goes_back_to_draft():
    news = ScheduledNewsFactory()
    news.status = NewsStatus.DRAFT
    news.save()

    [job] = jobs_of(news.pk, PUBLISH)
    assert job.state == JobState.CANCELLED and job.live_key is None and job.finished_at is not None
    assert job.result == "unscheduled"


@pytest.mark.django_db
def test_it_cancels_both_jobs_when_an_item_is_deleted():
    news = ScheduledNewsFactory(expires_at=later(days=3))
    pk = news.pk
    assert live_job(pk, PUBLISH) and live_job(pk, EXPIRE)

    news.delete()

    assert [j.state for j in jobs_of(pk, PUBLISH) + jobs_of(pk, EXPIRE)] == [JobState.CANCELLED] * 2
    assert live_job(pk, PUBLISH) is None and live_job(pk, EXPIRE) is None


@pytest.mark.django_db
def test_it_cancels_the_jobs_of_items_deleted_through_a_queryset():
    items = [ScheduledNewsFactory(expires_at=later(days=1)) for _ in range(3)]
    News.objects.filter(pk__in=[n.pk for n in items]).delete()  # Django still sends post_delete
    assert not Job.objects.filter(live_key__isnull=False).exists()


@pytest.mark.django_db
def test_it_follows_status_changes():
    news = NewsFactory(expires_at=later(days=2))  # draft: nothing to do yet
    assert jobs_of(news.pk, PUBLISH) == [] and jobs_of(news.pk, EXPIRE) == []

    news.status, news.scheduled_at = NewsStatus.SCHEDULED, later(hours=1)
    news.save()
    assert live_job(news.pk, PUBLISH).run_at == news.scheduled_at
    assert live_job(news.pk, EXPIRE).run_at == news.expires_at  # scheduled items get their expiry too

    # An editor publishes it by hand: the publishing job goes, the expiration job stays.
    news.status, news.published_at = NewsStatus.PUBLISHED, timezone.now()
    news.save()
    assert live_job(news.pk, PUBLISH) is None
    assert jobs_of(news.pk, PUBLISH)[-1].state == JobState.CANCELLED
    assert live_job(news.pk, EXPIRE).run_at == news.expires_at

    news.status, news.archived_at = NewsStatus.ARCHIVED, timezone.now()
    news.save()
    assert live_job(news.pk, EXPIRE) is None
    assert jobs_of(news.pk, EXPIRE)[-1].state == JobState.CANCELLED

    # Scheduled again after a cancel: a new job, still only one live.
    news.status, news.scheduled_at = NewsStatus.SCHEDULED, later(hours=3)
    news.save()
    assert len(jobs_of(news.pk, PUBLISH)) == 2
    assert live_job(news.pk, PUBLISH).run_at == news.scheduled_at


@pytest.mark.django_db
def test_a_scheduled_status_without_a_time_has_no_publishing_job():
    news = NewsFactory(status=NewsStatus.SCHEDULED, scheduled_at=None)
    assert jobs_of(news.pk, PUBLISH) == []


@pytest.mark.django_db
def test_the_expiration_job_follows_expires_at():
    news = PublishedNewsFactory()
    assert jobs_of(news.pk, EXPIRE) == []

    news.expires_at = first = later(days=1)
    news.save()
    [job] = jobs_of(news.pk, EXPIRE)
    assert job.state == JobState.SCHEDULED and job.run_at == first

    news.expires_at = second = later(days=4)
    news.save()
    [moved] = jobs_of(news.pk, EXPIRE)
    assert moved.pk == job.pk and moved.run_at == second and moved.payload["news_id"] == news.pk

    news.expires_at = None
    news.save()
    [cancelled] = jobs_of(news.pk, EXPIRE)
    assert cancelled.state == JobState.CANCELLED and cancelled.live_key is None


@pytest.mark.django_db
def test_saving_an_unchanged_item_again_creates_and_changes_nothing():
    news = ScheduledNewsFactory(expires_at=later(days=1))
    before = {(j.pk, j.state, j.run_at, str(j.payload)) for j in Job.objects.all()}

    news.save()
    news.title = "a new title"
    news.save()
    # As the admin does it: a fresh instance whose times come back from the database in
    # UTC, while the first save carried the editor's local time zone.
    again = News.objects.get(pk=news.pk)
    again.save()

    after = {(j.pk, j.state, j.run_at, str(j.payload)) for j in Job.objects.all()}
    assert after == before and len(after) == 2


@pytest.mark.django_db
def test_saving_the_same_time_in_another_time_zone_does_not_rewrite_the_job():
    at = timezone.localtime(later(hours=1))  # TIME_ZONE (+08:00), as the admin form gives it
    news = ScheduledNewsFactory(scheduled_at=at)
    [job] = jobs_of(news.pk, PUBLISH)

    News.objects.get(pk=news.pk).save()  # the same moment, read back as UTC

    [again] = jobs_of(news.pk, PUBLISH)
    assert again.payload == job.payload


@pytest.mark.django_db
def test_nothing_is_written_when_the_saving_transaction_rolls_back():
    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        ScheduledNewsFactory(scheduled_at=earlier(seconds=5), expires_at=later(days=1))
        raise Boom
    assert not News.objects.exists() and not Job.objects.exists()

    kept = ScheduledNewsFactory(expires_at=later(days=1))
    with pytest.raises(Boom), transaction.atomic():
        kept.status = NewsStatus.DRAFT
        kept.save()
        raise Boom
    assert live_job(kept.pk, PUBLISH) is not None and live_job(kept.pk, EXPIRE) is not None


@pytest.mark.django_db(transaction=True)
def test_the_wake_up_reaches_redis_only_after_the_save_commits():
    with transaction.atomic():
        news = ScheduledNewsFactory(scheduled_at=earlier(seconds=1))  # due: pending at once
        assert live_job(news.pk, PUBLISH).state == JobState.PENDING
        assert broker.queue_depth("news") == 0
    assert broker.queue_depth("news") == 1

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        ScheduledNewsFactory(scheduled_at=earlier(seconds=1))
        raise Boom
    assert broker.queue_depth("news") == 1 and News.objects.count() == 1


# ---------------------------------------------------------------- handlers and stale jobs


@pytest.mark.django_db
def test_the_publishing_job_publishes_a_due_item():
    at = earlier(seconds=1)
    news = ScheduledNewsFactory(scheduled_at=at)
    started = timezone.now()

    job = run_now(live_job(news.pk, PUBLISH))

    news.refresh_from_db()
    assert job.state == JobState.COMPLETED and job.result == "published"
    assert news.status == NewsStatus.PUBLISHED and news.published_at >= started
    assert Job.objects.filter(live_key__isnull=False).count() == 0


@pytest.mark.django_db
def test_the_publish_hooks_run_once_for_a_scheduled_publish_and_never_for_a_stale_job():
    # The WeChat app connects to this signal to create its `wechat:draft_creation` job.
    from news.signals import news_published

    seen = []

    def receiver(sender, *, news_id, **kwargs):
        seen.append(news_id)

    news_published.connect(receiver)
    try:
        news = ScheduledNewsFactory(scheduled_at=earlier(seconds=1))
        job = live_job(news.pk, PUBLISH)
        duplicate = Job.objects.create(job_type=PUBLISH, queue="news", payload=job.payload,
                                       state=JobState.SCHEDULED, timeout=60, run_at=timezone.now(),
                                       subject=f"news:{news.pk}")

        assert run_now(job).result == "published"
        assert run_now(duplicate).result == "news item is published, not scheduled"
        assert seen == [news.pk]
    finally:
        news_published.disconnect(receiver)


def _stale(news: News, make_stale) -> tuple[Job, News]:
    job = live_job(news.pk, PUBLISH)
    make_stale(news)
    return run_now(job), News.objects.filter(pk=news.pk).first()


@pytest.mark.django_db
def test_a_job_for_an_item_rescheduled_behind_the_signals_back_completes_without_publishing(caplog):
    news = ScheduledNewsFactory(scheduled_at=earlier(seconds=1))
    new_at = later(hours=1)
    with caplog.at_level(logging.INFO, logger="news.jobs"):
        job, after = _stale(news, lambda n: News.objects.filter(pk=n.pk).update(scheduled_at=new_at))
    assert job.state == JobState.COMPLETED
    assert job.result == f"news item was rescheduled to {new_at.isoformat()}"
    assert after.status == NewsStatus.SCHEDULED and after.published_at is None
    assert f"news {news.pk} not published: news item was rescheduled" in caplog.text


@pytest.mark.django_db
def test_a_job_for_an_unscheduled_item_completes_without_publishing():
    news = ScheduledNewsFactory(scheduled_at=earlier(seconds=1))
    job, after = _stale(news, lambda n: News.objects.filter(pk=n.pk).update(status=NewsStatus.DRAFT))
    assert job.state == JobState.COMPLETED and job.result == "news item is draft, not scheduled"
    assert after.status == NewsStatus.DRAFT and after.published_at is None


@pytest.mark.django_db
def test_a_job_for_a_deleted_item_completes_without_acting():
    news = ScheduledNewsFactory(scheduled_at=earlier(seconds=1))
    # A delete the signal did not see (raw SQL, another service): the job is still live.
    job, after = _stale(news, lambda n: News.objects.filter(pk=n.pk)._raw_delete(connection.alias))
    assert after is None
    assert job.state == JobState.COMPLETED and job.result == "news item no longer exists"


@pytest.mark.django_db
def test_a_job_for_an_item_an_editor_already_published_completes_without_acting():
    news = ScheduledNewsFactory(scheduled_at=earlier(seconds=1))
    job = live_job(news.pk, PUBLISH)
    news_publish(news_id=news.pk)  # a conditional UPDATE: no signal, the job stays live
    published_at = News.objects.get(pk=news.pk).published_at

    job = run_now(job)

    assert job.state == JobState.COMPLETED and job.result == "news item is published, not scheduled"
    assert News.objects.get(pk=news.pk).published_at == published_at


@pytest.mark.django_db
def test_an_item_rescheduled_while_its_job_runs_gets_a_new_job_and_the_running_one_acts_not():
    news = ScheduledNewsFactory(scheduled_at=earlier(seconds=1))
    old = live_job(news.pk, PUBLISH)
    Job.objects.filter(pk=old.pk).update(state=JobState.PENDING)
    running = services.job_claim(old.pk, worker="test:1")  # a worker has it

    news.scheduled_at = new_at = later(hours=1)
    news.save()
    # The worker's handler now runs with the old payload.
    result = handle_news_scheduled_publisher(NewsPublishPayload.from_json(running.payload), running)
    services.job_complete(running, result=result)

    assert result.startswith("news item was rescheduled to")
    assert News.objects.get(pk=news.pk).status == NewsStatus.SCHEDULED
    new = live_job(news.pk, PUBLISH)
    assert new.pk != old.pk and new.run_at == new_at and new.state == JobState.SCHEDULED
    assert Job.objects.get(pk=old.pk).state == JobState.COMPLETED


@pytest.mark.django_db
def test_the_expiration_job_archives_a_published_expired_item_once():
    news = PublishedNewsFactory(expires_at=earlier(seconds=1))
    job = run_now(live_job(news.pk, EXPIRE))

    news.refresh_from_db()
    assert job.state == JobState.COMPLETED and job.result == "archived"
    assert news.status == NewsStatus.ARCHIVED and news.archived_at is not None
    archived_at = news.archived_at

    # Run again (at least once delivery: a duplicate job for the same item).
    dup = Job.objects.create(job_type=EXPIRE, queue="news", payload=job.payload, state=JobState.SCHEDULED,
                             timeout=60, run_at=timezone.now(), subject=f"news:{news.pk}")
    dup = run_now(dup)
    assert dup.state == JobState.COMPLETED and dup.result == "news item is archived, not published"
    assert News.objects.get(pk=news.pk).archived_at == archived_at
    assert run_job(job.pk) == "skipped"  # a duplicate wake-up of a finished job does nothing


@pytest.mark.django_db
def test_a_stale_expiration_job_says_why_it_did_not_archive():
    extended = PublishedNewsFactory(expires_at=earlier(seconds=1))
    cleared = PublishedNewsFactory(expires_at=earlier(seconds=1))
    j1, j2 = live_job(extended.pk, EXPIRE), live_job(cleared.pk, EXPIRE)
    new_expiry = later(days=1)
    News.objects.filter(pk=extended.pk).update(expires_at=new_expiry)
    News.objects.filter(pk=cleared.pk).update(expires_at=None)

    assert run_now(j1).result == f"news item does not expire until {new_expiry.isoformat()}"
    assert run_now(j2).result == "news item no longer has an expiry"
    assert set(News.objects.values_list("status", flat=True)) == {NewsStatus.PUBLISHED}


# ---------------------------------------------------------------- sweeps


@pytest.mark.django_db
def test_the_publish_sweep_publishes_a_due_item_that_queryset_update_left_without_a_job():
    news = NewsFactory()
    News.objects.filter(pk=news.pk).update(status=NewsStatus.SCHEDULED, scheduled_at=earlier(minutes=2))
    assert jobs_of(news.pk, PUBLISH) == []

    assert news_publish_sweep() == "1 enqueued"
    job = run_now(live_job(news.pk, PUBLISH))

    assert job.result == "published"
    assert News.objects.get(pk=news.pk).status == NewsStatus.PUBLISHED
    assert news_publish_sweep() == "0 enqueued"


@pytest.mark.django_db
def test_the_publish_sweep_leaves_items_that_have_a_live_job_or_are_not_due():
    due = ScheduledNewsFactory(scheduled_at=earlier(seconds=5))  # signal made a pending job
    ScheduledNewsFactory(scheduled_at=later(minutes=5))
    NewsFactory(scheduled_at=earlier(minutes=1))  # a draft that keeps an old time
    before = Job.objects.count()

    assert news_publish_sweep() == "0 enqueued"
    assert Job.objects.count() == before and len(jobs_of(due.pk, PUBLISH)) == 1


@pytest.mark.django_db
def test_the_publish_sweep_is_not_blinded_by_a_backlog_of_items_that_have_jobs():
    # More due items with live jobs (waiting in a busy queue) than one sweep's batch...
    for _ in range(3):
        ScheduledNewsFactory(scheduled_at=earlier(minutes=10))
    orphan = NewsFactory()
    News.objects.filter(pk=orphan.pk).update(status=NewsStatus.SCHEDULED, scheduled_at=earlier(minutes=1))

    # ...must not hide the one without a job.
    news_publish_sweep(limit=2)
    assert live_job(orphan.pk, PUBLISH) is not None


@pytest.mark.django_db(transaction=True)
def test_concurrent_publish_sweeps_make_one_job_per_item():
    items = [NewsFactory() for _ in range(20)]
    News.objects.filter(pk__in=[n.pk for n in items]).update(
        status=NewsStatus.SCHEDULED, scheduled_at=earlier(minutes=1))
    _, errors = run_concurrently(news_publish_sweep, 4)

    assert errors == []
    assert Job.objects.filter(job_type=PUBLISH).count() == 20
    assert Job.objects.filter(job_type=PUBLISH, live_key__isnull=False).count() == 20


@pytest.mark.django_db
def test_the_archive_sweep_archives_expired_items_that_queryset_update_changed():
    expired = PublishedNewsFactory(expires_at=later(days=1))
    News.objects.filter(pk=expired.pk).update(expires_at=earlier(minutes=1))
    fresh = PublishedNewsFactory(expires_at=later(days=1))
    never = PublishedNewsFactory()
    draft = NewsFactory(expires_at=earlier(days=1))

    assert news_archive_sweep() == "1 archived"

    statuses = dict(News.objects.values_list("pk", "status"))
    assert statuses == {expired.pk: NewsStatus.ARCHIVED, fresh.pk: NewsStatus.PUBLISHED,
                        never.pk: NewsStatus.PUBLISHED, draft.pk: NewsStatus.DRAFT}
    assert News.objects.get(pk=expired.pk).archived_at is not None
    assert news_archive_sweep() == "0 archived"
