"""News status changes: idempotent, guarded, and race-free."""


from datetime import timedelta

import pytest
from django.utils import timezone

from news.models import News, NewsStatus
from news.factories import NewsFactory, PublishedNewsFactory, ScheduledNewsFactory
from news.services import NewsStateError, news_archive, news_publish
from tests.conftest import run_concurrently


@pytest.mark.django_db
def test_publish_sets_status_and_time():
    news = NewsFactory()
    assert news_publish(news_id=news.pk) is True
    news.refresh_from_db()
    assert news.status == NewsStatus.PUBLISHED and news.published_at is not None


@pytest.mark.django_db
def test_publishing_a_published_item_is_a_no_op():
    news = PublishedNewsFactory()
    before = news.published_at
    assert news_publish(news_id=news.pk) is False
    news.refresh_from_db()
    assert news.published_at == before


@pytest.mark.django_db
def test_archiving_a_draft_is_refused_with_a_clear_error():
    news = NewsFactory()
    with pytest.raises(NewsStateError, match=rf"news {news.pk} is draft; only published news can be archived"):
        news_archive(news_id=news.pk)


@pytest.mark.django_db
def test_archive_then_archive_again():
    news = PublishedNewsFactory()
    assert news_archive(news_id=news.pk) is True
    assert news_archive(news_id=news.pk) is False
    with pytest.raises(NewsStateError, match="archived"):
        news_publish(news_id=news.pk)


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_publishers_cannot_both_win():
    news = ScheduledNewsFactory()
    results, errors = run_concurrently(lambda: news_publish(news_id=news.pk), 8)
    assert errors == []
    assert sorted(results) == [False] * 7 + [True]
    assert News.objects.get(pk=news.pk).status == NewsStatus.PUBLISHED


@pytest.mark.django_db(transaction=True)
def test_news_save_writes_the_item_and_its_jobs_in_one_transaction():
    from django.db.models.signals import post_save

    from jobs.models import Job
    from news.models import News, NewsStatus
    from news.services import news_save

    def fail_after_the_jobs(sender, instance, **kwargs):
        raise RuntimeError("crash after the jobs were written")

    # Connected after the project's receiver, so the publishing job is written first.
    post_save.connect(fail_after_the_jobs, sender=News, dispatch_uid="test_fail_after_the_jobs")
    try:
        item = News(title="t", content="c", status=NewsStatus.SCHEDULED,
                    scheduled_at=timezone.now() + timedelta(hours=1))
        with pytest.raises(RuntimeError):
            news_save(news=item)
    finally:
        post_save.disconnect(sender=News, dispatch_uid="test_fail_after_the_jobs")
    assert not News.objects.exists() and not Job.objects.exists()

    news_save(news=News(title="t", content="c", status=NewsStatus.SCHEDULED,
                        scheduled_at=timezone.now() + timedelta(hours=1)))
    assert News.objects.count() == 1 and Job.objects.filter(job_type="news:scheduled_publisher").count() == 1


@pytest.mark.django_db
def test_each_change_moves_its_own_item_and_no_other():
    from news.services import news_archive_expired, news_publish_scheduled

    def states():
        return dict(News.objects.values_list("pk", "status"))

    now = timezone.now()
    draft, other_draft = NewsFactory(), NewsFactory()
    due, other_due = (ScheduledNewsFactory(scheduled_at=now - timedelta(minutes=1)) for _ in range(2))
    live, other_live = PublishedNewsFactory(), PublishedNewsFactory()
    News.objects.filter(pk__in=[live.pk, other_live.pk]).update(expires_at=now - timedelta(minutes=1))

    before = states()
    assert news_publish(news_id=draft.pk) is True
    assert news_publish_scheduled(news_id=due.pk, scheduled_at=due.scheduled_at) == (True, "published")
    assert news_archive(news_id=live.pk) is True
    assert news_archive_expired(news_id=other_live.pk) == (True, "archived")
    after = states()
    assert {pk for pk in before if before[pk] != after[pk]} == {draft.pk, due.pk, live.pk, other_live.pk}
    assert (after[other_draft.pk], after[other_due.pk]) == (NewsStatus.DRAFT, NewsStatus.SCHEDULED)
    row = News.objects.get(pk=live.pk)
    assert row.archived_at is not None and row.updated_at >= row.archived_at
    row = News.objects.get(pk=draft.pk)
    assert row.published_at is not None and row.updated_at >= row.published_at
