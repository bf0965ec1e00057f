"""How long an article waits for WeChat is a duration (WECHAT_PUBLISH_MAX_WAIT from its
submit), not a count of polls: the polls back off up to WECHAT_POLL_MAX_INTERVAL but are never
scheduled past the deadline, and when it runs out the article goes to a person (unknown) with
its reason, never left `publishing` behind a dead job.

Most tests call the publishing service as its job handler does and move this process's clock
(time-machine) to each wake-up the service asks for; the fake WeChat runs in this process, so
its publishing delays follow the same clock. One test runs real workers for the 150 s a slow
publication really takes."""

import subprocess
import sys
from datetime import datetime, time as dtime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.files.base import ContentFile
from django.utils import timezone

from jobs.errors import PermanentError, Snooze
from jobs.models import Job, JobState
from news.factories import NewsFactory
from news.services import news_publish
from tests.conftest import ROOT, wait_for
from tests.wechat_fixtures import callback, fake_wechat, publish_event_xml, wechat_env  # noqa: F401  (fixture)
from wechat.models import ArticleState, WechatArticle
from wechat.scheduling import WECHAT_PUBLISHING
from wechat.services import next_quota_reset, wechat_draft_create, wechat_publish, wechat_resolve_unknown

pytestmark = pytest.mark.django_db

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64 + b"\xff\xd9"


@pytest.fixture
def clock():
    """This process's clock (and so the fake WeChat's) at noon in Beijing, moved by the test:
    the daily budgets cannot roll over at midnight there during a test."""
    zone = ZoneInfo("Asia/Shanghai")
    noon = datetime.combine(timezone.now().astimezone(zone).date(), dtime(12), tzinfo=zone)
    with time_machine.travel(noon, tick=True) as traveller:
        yield traveller


@pytest.fixture
def fast(settings):
    """A 10-minute wait, polls from 60 s doubling up to 240 s."""
    settings.WECHAT_PUBLISH_MAX_WAIT, settings.WECHAT_POLL_FIRST, settings.WECHAT_POLL_MAX_INTERVAL = 600, 60, 240
    settings.WECHAT_RECONCILE_DELAY = 60


@pytest.fixture
def submitted(fake_wechat, settings, tmp_path):
    """A news item's article submitted (WeChat now publishing it, for as long as the test says)."""
    settings.MEDIA_ROOT = str(tmp_path)

    def make() -> tuple[WechatArticle, datetime]:
        news = NewsFactory(push_to_wechat=True, cover_image=ContentFile(JPEG, name="cover.jpg"))
        news_publish(news_id=news.pk)
        wechat_draft_create(news_id=news.pk)
        article = WechatArticle.objects.get(news=news)
        with pytest.raises(Snooze, match="submitted as publish") as caught:
            publish(article)
        article.refresh_from_db()
        assert article.state == ArticleState.PUBLISHING
        return article, caught.value.until

    return make


def publish(article) -> str:
    return wechat_publish(news_id=article.news_id, draft_id=article.draft_media_id)


def follow(clock, article, wake: datetime, *, limit: int = 40) -> tuple[list[datetime], Exception | str]:
    """Run the publishing service at each wake-up it asks for, as the engine would: the
    wake-ups and how it ended (a result, or the PermanentError that makes the job dead)."""
    wakes = [wake]
    for _ in range(limit):
        clock.move_to(wakes[-1])
        try:
            return wakes, publish(article)
        except Snooze as snooze:
            assert snooze.until > wakes[-1] or snooze.until == wakes[-1] == deadline_of(article)
            wakes.append(snooze.until)
        except PermanentError as dead:
            return wakes, dead
    pytest.fail(f"still waiting after {limit} runs: {wakes[-3:]}")


def deadline_of(article) -> datetime:
    article = WechatArticle.objects.get(pk=article.pk)
    return (article.waiting_since or article.submitted_at) + timedelta(seconds=600)


def seconds_after(start: datetime, moments: list[datetime]) -> list[int]:
    return [round((m - start).total_seconds()) for m in moments]


def test_polls_back_off_never_past_the_deadline_and_then_the_article_goes_to_a_person(
        submitted, fake_wechat, fast, clock, caplog, client):
    article, first = submitted()  # WeChat never settles it by itself

    wakes, end = follow(clock, article, first)

    # 60 s after the submit, then doubling (120, 240) capped at 240, the last cut at the deadline.
    assert seconds_after(article.submitted_at, wakes) == [60, 180, 420, 600]
    assert wakes[-1] == deadline_of(article) and fake_wechat.count("freepublish/get") == 4
    assert isinstance(end, PermanentError) and "WECHAT_PUBLISH_MAX_WAIT (600 s)" in str(end)
    article.refresh_from_db()
    assert article.state == ArticleState.UNKNOWN and article.last_error == str(end)
    assert "still publishing (publish_status 1) at poll 4" in article.last_error
    assert "'search WeChat's publish records again'" in article.last_error
    assert any(r.getMessage().startswith(f"ALERT wechat_unknown:news:{article.news_id}") for r in caplog.records)
    with pytest.raises(PermanentError, match="WECHAT_PUBLISH_MAX_WAIT"):
        publish(article)  # its job stays dead (the dead-jobs alert) until a person acts
    assert fake_wechat.count("freepublish/get") == 4 and fake_wechat.count("freepublish/submit") == 1

    # WeChat finishes late: the push still settles it.
    pub = fake_wechat.settle(article.publish_id, 0)
    response = callback(client, publish_event_xml(article.publish_id, 0, pub["article_id"], pub["urls"][0]))
    assert response.content == b"success"
    article.refresh_from_db()
    assert article.state == ArticleState.PUBLISHED and article.article_url == pub["urls"][0]


def test_a_person_checking_again_polls_with_a_new_wait_and_it_ends_published(submitted, fake_wechat, fast, clock):
    article, first = submitted()
    follow(clock, article, first)
    assert WechatArticle.objects.get(pk=article.pk).state == ArticleState.UNKNOWN
    Job.objects.filter(job_type=WECHAT_PUBLISHING).update(state=JobState.DEAD, live_key=None)
    clock.shift(timedelta(hours=1))

    assert wechat_resolve_unknown(news_id=article.news_id, published=None)

    article.refresh_from_db()
    assert article.state == ArticleState.PUBLISHING and article.polls == 0
    assert Job.objects.get(job_type=WECHAT_PUBLISHING, state=JobState.PENDING)
    with pytest.raises(Snooze, match="still in progress") as caught:
        publish(article)
    assert caught.value.until <= deadline_of(article) and deadline_of(article) > timezone.now()
    fake_wechat.settle(article.publish_id, 0)
    clock.move_to(caught.value.until)
    assert publish(article) == f"published: {article.publish_id}"
    assert fake_wechat.count("freepublish/submit") == 1


def test_a_publication_that_takes_longer_than_every_interval_is_still_followed_to_the_end(
        submitted, fake_wechat, fast, clock):
    fake_wechat.publish_seconds = 590  # WeChat takes almost the whole wait
    article, first = submitted()

    wakes, end = follow(clock, article, first)

    assert end == f"published: {article.publish_id}"
    assert seconds_after(article.submitted_at, wakes) == [60, 180, 420, 600]
    assert WechatArticle.objects.get(pk=article.pk).state == ArticleState.PUBLISHED


def test_wechat_failing_a_poll_asks_again_later_instead_of_spending_the_jobs_retries(
        submitted, fake_wechat, fast, clock):
    article, first = submitted()
    fake_wechat.script("freepublish/get", -1, ("http", 502), 45011, "close")  # busy, 5xx, rate limit, network

    wakes, end = follow(clock, article, first)

    assert seconds_after(article.submitted_at, wakes) == [60, 180, 420, 600]
    assert isinstance(end, PermanentError) and "WECHAT_PUBLISH_MAX_WAIT" in str(end)
    assert "the last poll failed: freepublish/get" in str(end)
    assert WechatArticle.objects.get(pk=article.pk).state == ArticleState.UNKNOWN


def test_a_spent_daily_budget_waits_for_the_deadline_not_past_it(submitted, fake_wechat, fast, clock, settings):
    settings.WECHAT_POLLS_PER_DAY = 1
    article, first = submitted()

    wakes, end = follow(clock, article, first)

    assert next_quota_reset() > wakes[-1]  # it would have waited until tomorrow
    assert seconds_after(article.submitted_at, wakes) == [60, 180, 600]
    assert fake_wechat.count("freepublish/get") == 1
    assert isinstance(end, PermanentError) and "WECHAT_POLLS_PER_DAY" in str(end)
    assert WechatArticle.objects.get(pk=article.pk).state == ArticleState.UNKNOWN


def test_an_unknown_submit_outcome_is_searched_for_until_the_deadline_then_a_person(
        submitted, fake_wechat, fast, clock, settings, tmp_path):
    settings.WECHAT_RECONCILE_MAX_CHECKS = 50  # the deadline, not the number of searches, ends it
    settings.MEDIA_ROOT = str(tmp_path)
    news = NewsFactory(push_to_wechat=True, cover_image=ContentFile(JPEG, name="cover.jpg"))
    news_publish(news_id=news.pk)
    wechat_draft_create(news_id=news.pk)
    article = WechatArticle.objects.get(news=news)
    fake_wechat.script("freepublish/submit", "drop")  # accepted, the answer lost; WeChat never settles it
    fake_wechat.script("freepublish/batchget", -1)  # and the first search meets a busy WeChat
    with pytest.raises(Snooze, match="never submitted again") as caught:
        publish(article)

    wakes, end = follow(clock, article, caught.value.until)

    article.refresh_from_db()
    assert wakes[-1] == deadline_of(article) and all(w <= wakes[-1] for w in wakes)
    assert seconds_after(article.submitted_at, wakes) == [60, 180, 420, 600]
    assert isinstance(end, PermanentError) and "WECHAT_PUBLISH_MAX_WAIT (600 s)" in str(end)
    assert article.state == ArticleState.UNKNOWN and "Submitting again could publish twice" in article.last_error
    assert fake_wechat.count("freepublish/submit") == 1 and fake_wechat.count("freepublish/batchget") == 4


@pytest.mark.parametrize("env, message", [
    ({"WECHAT_MAX_POLLS": "12"}, "configuration error: WECHAT_MAX_POLLS is no longer read: how long an article may "
                                 "stay publishing is WECHAT_PUBLISH_MAX_WAIT (seconds, default 86400); remove "
                                 "WECHAT_MAX_POLLS"),
    ({"WECHAT_PUBLISH_MAX_WAIT": "30"}, "configuration error: WECHAT_PUBLISH_MAX_WAIT must be >= 60, got 30"),
    ({"WECHAT_PUBLISH_MAX_WAIT": "an hour"},
     "configuration error: WECHAT_PUBLISH_MAX_WAIT must be an integer, got 'an hour'"),
    ({"WECHAT_PUBLISH_MAX_WAIT": "120", "WECHAT_RECONCILE_DELAY": "300"},
     "configuration error: WECHAT_PUBLISH_MAX_WAIT (120 s) must be longer than WECHAT_POLL_FIRST (60 s) and "
     "WECHAT_RECONCILE_DELAY (300 s): else no poll or search happens before it runs out"),
])
def test_the_wait_setting_is_checked_at_start_up_naming_the_variable(env, message):
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", **env})
    assert (result.returncode, result.stderr.strip()) == (2, message)


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_a_publication_taking_150_s_with_a_2_s_poll_interval_ends_published(start_cluster, fake_wechat):
    """The operator's case: polls every 2 s, WeChat takes 150 s. Counted polls gave up after 12
    (about 25 s), the article left publishing behind a dead job. Real workers, real time."""
    fake_wechat.publish_seconds = 150
    start_cluster(queues=["wechat"], env=wechat_env(fake_wechat, WECHAT_POLL_FIRST=2, WECHAT_POLL_MAX_INTERVAL=2))
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)

    def settled_or_dead():
        article = WechatArticle.objects.get(news=news)
        dead = Job.objects.filter(job_type=WECHAT_PUBLISHING, subject=f"news:{news.pk}", state=JobState.DEAD)
        if dead.exists() or article.state not in (ArticleState.PENDING, ArticleState.DRAFTED,
                                                  ArticleState.SUBMITTING, ArticleState.PUBLISHING):
            return article

    article = wait_for(settled_or_dead, 200, 0.5, "the article to be settled (or its job to die)")

    assert article.state == ArticleState.PUBLISHED, (article.state, article.last_error)
    [pub] = fake_wechat.publishes.values()
    assert article.article_url == pub["urls"][0] and fake_wechat.count("freepublish/submit") == 1
    job = Job.objects.get(job_type=WECHAT_PUBLISHING, subject=f"news:{news.pk}")
    assert job.state == JobState.COMPLETED and job.errors == [] and job.attempts == 1
    gets = [c["at"] for c in fake_wechat.calls_to("freepublish/get")]
    assert gets[-1] - pub["submitted_at"] >= 150 and article.polls == len(gets)
    assert 40 <= len(gets) <= 80  # every 2 s or so, within WECHAT_POLLS_PER_DAY (80)
    assert min(b - a for a, b in zip(gets, gets[1:])) >= 1.9  # never more often than asked


def test_a_refused_poll_after_an_accepted_submit_goes_to_a_person_never_to_failed(submitted, fake_wechat, fast, clock):
    """WeChat accepted the submit; then freepublish/get is refused (the server's IP dropped
    from the whitelist, 40164). That says nothing of the publication: `failed` would let a
    retry submit a second time. The article goes to a person as unknown, with the reason."""
    article, first = submitted()
    fake_wechat.script("freepublish/get", 40164)

    wakes, end = follow(clock, article, first)

    article.refresh_from_db()
    assert article.state == ArticleState.UNKNOWN, article.last_error
    assert isinstance(end, PermanentError) and "freepublish/get refused the question" in str(end)
    assert "40164" in article.last_error
    assert fake_wechat.count("freepublish/submit") == 1
