"""The WeChat services, called as the job handlers call them, against the real database and
the fake WeChat over HTTP: what each stage sends, what a repeated run does (jobs run at least
once), how a lost answer is reconciled, and how WeChat's answers become job outcomes. Also
the callback URL and the admin."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from jobs.errors import PermanentError, Snooze
from jobs.models import Job, JobState
from news.factories import NewsFactory
from news.services import news_publish
from tests.wechat_fixtures import DEFAULT_THUMB, callback, fake_wechat, publish_event_xml  # noqa: F401  (fixture)
from wechat.client import WechatOutcomeUnknown, WechatTransientError
from wechat.models import ArticleState, ImageKind, WechatArticle, WechatImage
from wechat.scheduling import WECHAT_DRAFT_CREATION, WECHAT_PUBLISHING, WECHAT_PUSH_MATCH
from wechat.services import (
    DEFAULT_THUMB_PATH,
    next_quota_reset,
    wechat_draft_create,
    wechat_match_push,
    wechat_publish,
    wechat_resolve_unknown,
    wechat_retry,
)

pytestmark = pytest.mark.django_db

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def published(fake_wechat, settings, tmp_path):
    """A news item marked for WeChat, just published: its article waits for its draft."""
    settings.MEDIA_ROOT = str(tmp_path)

    def make(**fields):
        fields.setdefault("cover_image", ContentFile(JPEG, name="cover.jpg"))
        news = NewsFactory(push_to_wechat=True, **fields)
        news_publish(news_id=news.pk)
        return news

    return make


def drafted(fake, news) -> WechatArticle:
    wechat_draft_create(news_id=news.pk)
    return WechatArticle.objects.get(news=news)


def submitted(fake, news) -> WechatArticle:
    article = drafted(fake, news)
    with pytest.raises(Snooze):
        wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)
    article.refresh_from_db()
    return article


def publish(article) -> str:
    return wechat_publish(news_id=article.news_id, draft_id=article.draft_media_id)


def lost_submit(fake, news, response="drop") -> WechatArticle:
    """A draft whose freepublish/submit got no answer; the first search is due now."""
    article = drafted(fake, news)
    fake.script("freepublish/submit", response)
    with pytest.raises(Snooze, match="looking for the publication in freepublish/batchget") as caught:
        publish(article)
    article.refresh_from_db()
    assert article.state == ArticleState.CHECKING and caught.value.until > timezone.now()
    WechatArticle.objects.filter(pk=article.pk).update(submitted_at=timezone.now() - timedelta(minutes=2))
    return article


# ---------------------------------------------------------------- starting


def test_publishing_an_item_marked_for_wechat_queues_its_draft(published):
    news = published()

    article = WechatArticle.objects.get(news=news)
    assert article.state == ArticleState.PENDING
    job = Job.objects.get(subject=f"news:{news.pk}", job_type=WECHAT_DRAFT_CREATION)
    assert job.state == JobState.PENDING and job.queue == "wechat"


def test_publishing_an_item_not_marked_for_wechat_sends_nothing(fake_wechat):
    news = NewsFactory(push_to_wechat=False)
    news_publish(news_id=news.pk)

    assert not WechatArticle.objects.exists()
    assert not Job.objects.filter(job_type=WECHAT_DRAFT_CREATION).exists()
    assert wechat_draft_create(news_id=news.pk) == "no WeChat article for this news item"


def test_a_draft_job_enqueued_directly_for_a_marked_item_creates_its_article(fake_wechat):
    news = NewsFactory(push_to_wechat=True)  # as enqueue_test_jobs does: no publish hook ran

    result = wechat_draft_create(news_id=news.pk)

    assert result.startswith("draft DRAFT_") and WechatArticle.objects.get(news=news).state == ArticleState.DRAFTED


# ---------------------------------------------------------------- the draft


def test_it_creates_the_draft_with_the_cover_and_content_images_on_wechat(published, fake_wechat):
    fake_wechat.images["/img/photo.png"] = (PNG, "image/png")
    outside = f"{fake_wechat.root}/img/photo.png"
    on_wechat = "http://mmbiz.qpic.cn/mmbiz_png/already/0"
    news = published(title="发布会", author="编辑部",
                     content=f'<p>正文</p><img alt="a" src="{outside}"><img src=\'{outside}\'><img src="{on_wechat}">')

    result = wechat_draft_create(news_id=news.pk)

    article = WechatArticle.objects.get(news=news)
    assert article.state == ArticleState.DRAFTED and result == f"draft {article.draft_media_id}"
    [sent] = fake_wechat.drafts[article.draft_media_id]["articles"]
    assert sent["title"] == "发布会" and sent["author"] == "编辑部" and "digest" not in sent
    [cover_upload] = fake_wechat.calls_to("material/add_material")
    assert cover_upload["query"]["type"] == "thumb"
    assert fake_wechat.materials[sent["thumb_media_id"]]["data"] == JPEG
    assert outside not in sent["content"] and on_wechat in sent["content"]
    assert sent["content"].count(article.content_images[outside]) == 2
    assert fake_wechat.uploaded_images[article.content_images[outside]] == PNG
    assert fake_wechat.count("media/uploadimg") == 1  # the same image twice is uploaded once
    assert f"<!--{article.draft_marker}-->" in sent["content"]  # hidden: found again after a lost answer
    assert article.draft_requested_at is None and fake_wechat.count("draft/batchget") == 0
    job = Job.objects.get(subject=f"news:{news.pk}", job_type=WECHAT_PUBLISHING)
    assert job.payload["draft_id"] == article.draft_media_id and job.state == JobState.PENDING


def test_running_the_draft_job_again_creates_no_second_draft(published, fake_wechat):
    news = published()
    wechat_draft_create(news_id=news.pk)

    assert wechat_draft_create(news_id=news.pk) == "draft already created (article is drafted)"
    assert fake_wechat.count("draft/add") == 1 and fake_wechat.count("material/add_material") == 1


def test_a_retried_draft_reuses_the_images_already_uploaded(published, fake_wechat):
    fake_wechat.images["/img/photo.png"] = (PNG, "image/png")
    news = published(content=f'<img src="{fake_wechat.root}/img/photo.png">')
    fake_wechat.script("draft/add", -1)

    with pytest.raises(WechatTransientError):
        wechat_draft_create(news_id=news.pk)
    article = WechatArticle.objects.get(news=news)
    assert article.state == ArticleState.PENDING and "errcode -1" in article.last_error
    assert article.draft_requested_at is None  # refused: nothing to look for
    wechat_draft_create(news_id=news.pk)

    assert fake_wechat.count("draft/add") == 2 and fake_wechat.count("draft/batchget") == 0
    assert fake_wechat.count("material/add_material") == 1 and fake_wechat.count("media/uploadimg") == 1
    assert WechatArticle.objects.get(news=news).state == ArticleState.DRAFTED


def test_an_image_is_uploaded_once_whichever_articles_use_it(published, fake_wechat):
    fake_wechat.images["/img/a.png"] = (PNG, "image/png")
    fake_wechat.images["/img/same-bytes-other-url.png"] = (PNG, "image/png")
    first = published(content=f'<img src="{fake_wechat.root}/img/a.png">')
    second = published(content=f'<img src="{fake_wechat.root}/img/same-bytes-other-url.png">')

    a, b = drafted(fake_wechat, first), drafted(fake_wechat, second)

    assert a.thumb_media_id == b.thumb_media_id
    assert fake_wechat.count("material/add_material") == 1 and fake_wechat.count("media/uploadimg") == 1
    assert WechatImage.objects.filter(kind=ImageKind.THUMB).count() == 1
    assert WechatImage.objects.filter(kind=ImageKind.CONTENT).count() == 1


def test_a_draft_whose_answer_was_lost_is_found_in_the_draft_box_not_created_again(published, fake_wechat):
    news = published()
    fake_wechat.script("draft/add", "drop")  # WeChat creates it; the answer never arrives

    with pytest.raises(WechatOutcomeUnknown):
        wechat_draft_create(news_id=news.pk)
    article = WechatArticle.objects.get(news=news)
    assert article.state == ArticleState.PENDING and article.draft_requested_at is not None
    [made] = fake_wechat.drafts

    result = wechat_draft_create(news_id=news.pk)

    article.refresh_from_db()
    assert article.state == ArticleState.DRAFTED and article.draft_media_id == made
    assert "found in the draft box" in result
    assert fake_wechat.count("draft/add") == 1 and len(fake_wechat.drafts) == 1
    assert Job.objects.get(job_type=WECHAT_PUBLISHING, subject=f"news:{news.pk}").payload["draft_id"] == made


def test_a_lost_draft_is_recognised_by_title_and_cover_if_wechat_dropped_the_marker(published, fake_wechat):
    news = published()
    fake_wechat.script("draft/add", "drop")
    with pytest.raises(WechatOutcomeUnknown):
        wechat_draft_create(news_id=news.pk)
    [(made, draft)] = fake_wechat.drafts.items()
    draft["articles"][0]["content"] = "<p>sanitised</p>"

    wechat_draft_create(news_id=news.pk)

    assert WechatArticle.objects.get(news=news).draft_media_id == made and fake_wechat.count("draft/add") == 1


def test_a_lost_answer_for_a_draft_wechat_never_made_creates_it_once(published, fake_wechat):
    fake_wechat.images["/img/a.png"] = (PNG, "image/png")
    other = published(title="Someone else's", content=f'<img src="{fake_wechat.root}/img/a.png">')
    drafted(fake_wechat, other)  # another draft in the box, with the same cover
    news = published(content=f'<img src="{fake_wechat.root}/img/a.png">')
    fake_wechat.script("draft/add", "close")  # connection lost before WeChat did anything

    with pytest.raises(WechatOutcomeUnknown):
        wechat_draft_create(news_id=news.pk)
    wechat_draft_create(news_id=news.pk)

    article = WechatArticle.objects.get(news=news)
    assert article.state == ArticleState.DRAFTED and fake_wechat.count("draft/batchget") == 1
    assert article.draft_marker in fake_wechat.drafts[article.draft_media_id]["articles"][0]["content"]
    assert len(fake_wechat.drafts) == 2


def test_a_title_too_long_for_wechat_fails_before_anything_is_uploaded(published, fake_wechat):
    news = published(title="x" * 33)

    with pytest.raises(PermanentError, match="title: 33 characters; WeChat takes at most 32"):
        wechat_draft_create(news_id=news.pk)
    assert WechatArticle.objects.get(news=news).state == ArticleState.FAILED
    assert fake_wechat.calls == []


@pytest.mark.parametrize("field, value, setting", [
    ("title", "标" * 22, "WECHAT_TITLE_MAX_BYTES"),    # 22 characters, 66 bytes
    ("author", "作" * 9, "WECHAT_AUTHOR_MAX_BYTES"),    # 9 characters, 27 bytes
    ("digest", "摘" * 121, "WECHAT_DIGEST_MAX_BYTES"),  # 121 characters, 363 bytes
])
def test_text_under_the_character_limit_but_over_the_byte_limit_fails_first(published, fake_wechat, field, value,
                                                                            setting):
    news = published(**{field: value})

    with pytest.raises(PermanentError, match=f"{field}: .* bytes in UTF-8.*{setting}"):
        wechat_draft_create(news_id=news.pk)
    assert fake_wechat.calls == []


def test_a_field_wechat_refuses_fails_the_article_with_its_errcode(published, fake_wechat, settings):
    settings.WECHAT_AUTHOR_MAX_CHARS = 64  # our limit looser than WeChat's
    news = published(author="a" * 20)

    with pytest.raises(PermanentError, match="draft/add: errcode 45110"):
        wechat_draft_create(news_id=news.pk)
    article = WechatArticle.objects.get(news=news)
    assert article.state == ArticleState.FAILED and "45110" in article.last_error


def test_an_item_without_a_cover_uses_the_configured_default_media_id(published, fake_wechat, settings):
    settings.WECHAT_DEFAULT_THUMB_MEDIA_ID = DEFAULT_THUMB
    news = published(cover_image="")

    article = drafted(fake_wechat, news)

    assert fake_wechat.drafts[article.draft_media_id]["articles"][0]["thumb_media_id"] == DEFAULT_THUMB
    assert fake_wechat.count("material/add_material") == 0


def test_items_without_a_cover_get_the_shipped_default_cover_uploaded_once(published, fake_wechat):
    first, second = published(cover_image=""), published(cover_image="")

    a, b = drafted(fake_wechat, first), drafted(fake_wechat, second)

    assert a.state == b.state == ArticleState.DRAFTED and a.thumb_media_id == b.thumb_media_id
    material = fake_wechat.materials[a.thumb_media_id]
    assert material["type"] == "thumb" and material["data"] == DEFAULT_THUMB_PATH.read_bytes()
    assert len(material["data"]) <= 64 * 1024 and fake_wechat.count("material/add_material") == 1


def test_a_cover_that_is_not_a_jpeg_fails_naming_the_field(published, fake_wechat):
    news = published(cover_image=ContentFile(PNG, name="cover.png"))

    with pytest.raises(PermanentError, match="cover_image: 'cover.png' is not a JPEG"):
        wechat_draft_create(news_id=news.pk)
    assert fake_wechat.count("material/add_material") == 0 and fake_wechat.count("draft/add") == 0


def test_a_cover_over_64_kb_fails_naming_the_field(published, fake_wechat):
    news = published(cover_image=ContentFile(JPEG + b"\x00" * 65536, name="big.jpg"))

    with pytest.raises(PermanentError, match="cover_image: 'big.jpg' is larger than 64 KB"):
        wechat_draft_create(news_id=news.pk)
    assert fake_wechat.count("material/add_material") == 0


def test_a_missing_content_image_fails_naming_its_url(published, fake_wechat):
    news = published(content=f'<img src="{fake_wechat.root}/img/gone.png">')

    with pytest.raises(PermanentError, match="gone.png: HTTP 404"):
        wechat_draft_create(news_id=news.pk)


def test_with_auto_publish_off_it_stops_at_the_draft(published, fake_wechat, settings):
    settings.WECHAT_AUTO_PUBLISH = False
    news = published()

    assert "WECHAT_AUTO_PUBLISH is off" in wechat_draft_create(news_id=news.pk)
    assert not Job.objects.filter(job_type=WECHAT_PUBLISHING).exists()


def test_an_exhausted_daily_quota_waits_for_midnight_in_beijing(published, fake_wechat, beijing_daytime):
    news = published()
    fake_wechat.exhaust_quota("draft/add")

    with pytest.raises(Snooze) as caught:
        wechat_draft_create(news_id=news.pk)
    assert caught.value.until == next_quota_reset()
    article = WechatArticle.objects.get(news=news)
    assert article.state == ArticleState.PENDING and "45009" in article.last_error


def test_next_quota_reset_is_just_after_the_next_midnight_in_beijing():
    # 23:30 in Beijing is 15:30 UTC
    assert next_quota_reset(datetime(2025, 3, 1, 15, 30, tzinfo=ZoneInfo("UTC"))) == datetime(
        2025, 3, 2, 0, 1, tzinfo=ZoneInfo("Asia/Shanghai"))


def test_rate_limit_waits_are_bounded(published, fake_wechat, settings):
    settings.WECHAT_MAX_RATE_LIMIT_WAITS = 2
    news = published()
    fake_wechat.script("draft/add", 45011, 45011, 45011)

    for _ in range(2):
        with pytest.raises(Snooze) as caught:
            wechat_draft_create(news_id=news.pk)
        assert timedelta(seconds=55) < caught.value.until - timezone.now() <= timedelta(seconds=60)
    with pytest.raises(PermanentError, match="rate limited 3 times"):
        wechat_draft_create(news_id=news.pk)


def test_missing_credentials_fail_the_job_naming_the_variables(published, settings):
    settings.WECHAT_APP_ID = ""
    news = published()

    with pytest.raises(PermanentError, match="WECHAT_APP_ID"):
        wechat_draft_create(news_id=news.pk)
    assert WechatArticle.objects.get(news=news).state == ArticleState.FAILED


# ---------------------------------------------------------------- submitting and following


def test_it_submits_the_draft_once_and_then_only_asks_how_publishing_goes(published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    assert article.state == ArticleState.PUBLISHING
    assert article.publish_id == str(next(iter(fake_wechat.publishes)))  # WeChat sends a number

    with pytest.raises(Snooze, match="still in progress"):
        publish(article)

    assert fake_wechat.count("freepublish/submit") == 1 and fake_wechat.count("freepublish/get") == 1


def test_polling_backs_off_until_wechat_has_published(published, fake_wechat, settings):
    settings.WECHAT_POLL_FIRST, settings.WECHAT_POLL_MAX_INTERVAL = 10, 1000
    fake_wechat.publish_polls = 3  # publishing takes three polls
    news = published()
    article = submitted(fake_wechat, news)
    waits = []
    for _ in range(2):
        with pytest.raises(Snooze) as caught:
            publish(article)
        waits.append((caught.value.until - timezone.now()).total_seconds())

    assert publish(article) == f"published: {article.publish_id}"
    assert 15 < waits[0] <= 20 and 35 < waits[1] <= 40  # 10 s after the submit, then doubling
    article.refresh_from_db()
    assert article.state == ArticleState.PUBLISHED and article.polls == 3 and article.publish_status == 0
    assert article.article_url == f"https://mp.weixin.qq.com/s/fake{article.publish_id}_1"
    assert publish(article) == "article is published; nothing to do"
    assert fake_wechat.count("freepublish/get") == 3


@pytest.mark.parametrize("bad_url", ["javascript:alert(1)", "https://evil.example/s/x", "http://mp.weixin.qq.com/s/x"])
def test_an_article_url_from_polling_or_the_records_is_checked_like_the_pushs(published, fake_wechat, bad_url,
                                                                             caplog):
    news = published()
    article = submitted(fake_wechat, news)
    pub = fake_wechat.settle(article.publish_id, 0)
    pub["urls"] = [bad_url]  # freepublish/get answers with it

    assert publish(article) == f"published: {article.publish_id}"
    article.refresh_from_db()
    assert article.state == ArticleState.PUBLISHED and article.article_url == ""
    assert "article_url from freepublish/get not stored" in caplog.text

    other = published()
    lost = lost_submit(fake_wechat, other)
    later = fake_wechat.settle(max(fake_wechat.publishes), 0)  # the lost submit's publication
    fake_wechat.published[later["article_id"]]["news_item"][0]["url"] = bad_url  # freepublish/batchget has it
    assert publish(lost).startswith("published: found in freepublish/batchget")
    assert WechatArticle.objects.get(pk=lost.pk).article_url == ""


def test_a_publish_wechat_rejects_fails_the_article(published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    fake_wechat.settle(article.publish_id, 3)

    with pytest.raises(PermanentError, match=r"publishing failed \(publish_status 3\).*\[1\]"):
        publish(article)
    assert WechatArticle.objects.get(news=news).state == ArticleState.FAILED


def test_polling_waits_for_the_quota_reset_when_freepublish_get_is_used_up(published, fake_wechat, beijing_daytime):
    news = published()
    article = submitted(fake_wechat, news)
    fake_wechat.exhaust_quota("freepublish/get")

    with pytest.raises(Snooze) as caught:
        publish(article)
    assert caught.value.until == next_quota_reset()


def test_polling_keeps_within_its_own_daily_budget_of_freepublish_get(published, fake_wechat, settings, beijing_daytime):
    settings.WECHAT_POLLS_PER_DAY = 1
    first, second = submitted(fake_wechat, published()), submitted(fake_wechat, published())
    with pytest.raises(Snooze, match="still in progress"):
        publish(first)

    with pytest.raises(Snooze, match="WECHAT_POLLS_PER_DAY") as caught:
        publish(second)

    assert caught.value.until == next_quota_reset() and fake_wechat.count("freepublish/get") == 1
    assert WechatArticle.objects.get(pk=second.pk).polls == 0


def test_a_submit_whose_answer_was_lost_is_found_in_the_publish_records(published, fake_wechat):
    news = published()
    article = lost_submit(fake_wechat, news)
    [pub] = fake_wechat.publishes.values()
    fake_wechat.settle(pub["publish_id"], 0)

    result = publish(article)

    article.refresh_from_db()
    assert result == f"published: found in freepublish/batchget as article {pub['article_id']}"
    assert article.state == ArticleState.PUBLISHED and article.article_id == pub["article_id"]
    assert article.article_url == pub["urls"][0]
    assert fake_wechat.count("freepublish/submit") == 1 and len(fake_wechat.publishes) == 1


@pytest.mark.parametrize("response", ["close", "drop"])
def test_an_unknown_submit_is_never_sent_again_and_goes_to_a_person_when_wechat_cannot_prove_anything(
        published, fake_wechat, settings, response):
    """"close": the submit never reached WeChat; "drop": WeChat accepted it and is still
    publishing (the draft stays in the box, batchget lists successes only). We cannot tell the
    two apart, so neither is submitted again."""
    settings.WECHAT_RECONCILE_MAX_CHECKS = 2
    news = published()
    article = lost_submit(fake_wechat, news, response)
    for check in (1, 2):
        with pytest.raises(Snooze, match=f"not in freepublish/batchget yet \\(search {check} of 2\\).*not submitted "
                                         "again"):
            publish(article)
        assert WechatArticle.objects.get(pk=article.pk).state == ArticleState.CHECKING

    with pytest.raises(PermanentError, match="after 2 searches"):
        publish(article)

    article.refresh_from_db()
    assert article.state == ArticleState.UNKNOWN and "Submitting again could publish twice" in article.last_error
    assert fake_wechat.count("freepublish/submit") == 1 and fake_wechat.count("freepublish/batchget") == 2
    assert len(fake_wechat.drafts) == 1 and len(fake_wechat.publishes) == (1 if response == "drop" else 0)
    with pytest.raises(PermanentError, match="Submitting again could publish twice"):
        publish(article)  # its job stays dead (the dead-jobs alert) until a person resolves it
    assert fake_wechat.count("freepublish/submit") == 1


def test_when_the_publish_records_cannot_be_searched_a_person_decides(published, fake_wechat):
    news = published()
    article = lost_submit(fake_wechat, news)
    fake_wechat.exhaust_quota("freepublish/batchget")

    with pytest.raises(PermanentError, match="could not be searched.*45009"):
        publish(article)

    assert WechatArticle.objects.get(news=news).state == ArticleState.UNKNOWN
    with pytest.raises(PermanentError, match="could not be searched"):
        publish(article)
    assert wechat_retry(news_id=news.pk) == (f"News {news.pk}: not retried, the article is in state "
                                             "“Submit outcome unknown: a person must check WeChat”.")
    assert fake_wechat.count("freepublish/submit") == 1


def test_an_attempt_that_died_during_submit_is_looked_for_before_anything_is_sent(published, fake_wechat):
    news = published()
    article = drafted(fake_wechat, news)
    WechatArticle.objects.filter(pk=article.pk).update(state=ArticleState.SUBMITTING,
                                                       submitted_at=timezone.now())  # as a killed worker left it

    with pytest.raises(Snooze, match="waiting before looking"):
        publish(article)

    article.refresh_from_db()
    assert article.state == ArticleState.CHECKING and "stopped during freepublish/submit" in article.last_error
    assert fake_wechat.calls_to("freepublish/submit") == [] and fake_wechat.count("freepublish/batchget") == 0


def test_a_draft_with_a_publish_id_is_never_submitted_again(published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    WechatArticle.objects.filter(pk=article.pk).update(state=ArticleState.DRAFTED)  # however it got there

    assert publish(article) == "another attempt is submitting this draft"
    assert fake_wechat.count("freepublish/submit") == 1


def test_a_person_who_found_it_unpublished_can_submit_again(published, fake_wechat):
    news = published()
    article = drafted(fake_wechat, news)
    fake_wechat.script("freepublish/submit", -1)  # refused: the draft stays submittable
    with pytest.raises(WechatTransientError):
        publish(article)
    assert WechatArticle.objects.get(news=news).state == ArticleState.DRAFTED
    WechatArticle.objects.filter(pk=article.pk).update(state=ArticleState.UNKNOWN)
    Job.objects.filter(job_type=WECHAT_PUBLISHING).update(state=JobState.DEAD, live_key=None)

    assert wechat_resolve_unknown(news_id=news.pk, published=False)

    assert WechatArticle.objects.get(news=news).state == ArticleState.DRAFTED
    assert Job.objects.get(job_type=WECHAT_PUBLISHING, state=JobState.PENDING).payload["draft_id"] == \
        article.draft_media_id
    assert not wechat_resolve_unknown(news_id=news.pk, published=True)  # no longer unknown


def test_a_person_can_have_the_publish_records_searched_again(published, fake_wechat):
    news = published()
    article = lost_submit(fake_wechat, news)
    fake_wechat.exhaust_quota("freepublish/batchget")
    with pytest.raises(PermanentError):
        publish(article)
    Job.objects.filter(job_type=WECHAT_PUBLISHING).update(state=JobState.DEAD, live_key=None)
    fake_wechat.reset_quotas()
    fake_wechat.settle(next(iter(fake_wechat.publishes)), 0)

    assert wechat_resolve_unknown(news_id=news.pk, published=None)
    assert publish(article).startswith("published: found in freepublish/batchget")
    assert Job.objects.filter(job_type=WECHAT_PUBLISHING, state=JobState.PENDING).exists()


def test_retrying_a_failed_article_starts_over_with_a_new_draft(published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    fake_wechat.settle(article.publish_id, 4)
    with pytest.raises(PermanentError):
        publish(article)
    Job.objects.filter(subject=f"news:{news.pk}").update(state=JobState.DEAD, live_key=None)

    assert wechat_retry(news_id=news.pk) == f"News {news.pk}: draft creation queued."
    new = drafted(fake_wechat, news)

    assert new.draft_media_id != article.draft_media_id and new.publish_id == ""
    assert new.generation == 2 and new.draft_marker != article.draft_marker
    assert fake_wechat.count("material/add_material") == 1  # the cover is reused
    assert publish(article) == "stale: the article has another draft"


# ---------------------------------------------------------------- the callback URL


def test_the_callback_answers_wechats_server_check(client, fake_wechat):
    response = callback(client, method="get", echostr="abc123")

    assert response.status_code == 200 and response.content == b"abc123"


def test_the_callback_refuses_a_bad_signature(client, fake_wechat):
    response = callback(client, publish_event_xml(1), token="not-the-token")

    assert response.status_code == 403


def test_the_callback_is_closed_until_wechat_token_is_set(client, fake_wechat, settings):
    settings.WECHAT_TOKEN = ""

    response = callback(client, publish_event_xml(1))

    assert response.status_code == 503 and b"WECHAT_TOKEN" in response.content


def test_a_publish_push_settles_the_article_and_wakes_its_job(client, published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    job = Job.objects.get(job_type=WECHAT_PUBLISHING, subject=f"news:{news.pk}")
    Job.objects.filter(pk=job.pk).update(state=JobState.SCHEDULED, run_at=timezone.now() + timedelta(hours=1))

    for _ in range(2):  # WeChat may push the same event again
        response = callback(client, publish_event_xml(article.publish_id, 0, "ART_9", "https://mp.weixin.qq.com/s/x"))
        assert response.status_code == 200 and response.content == b"success"

    article.refresh_from_db()
    assert article.state == ArticleState.PUBLISHED and article.article_id == "ART_9"
    assert article.article_url == "https://mp.weixin.qq.com/s/x"
    job.refresh_from_db()
    assert job.run_at <= timezone.now() and job.state == JobState.PENDING  # woken: finishes now, not at its poll
    assert Job.objects.filter(job_type=WECHAT_PUBLISHING, subject=f"news:{news.pk}").count() == 1
    assert fake_wechat.count("freepublish/get") == 0


def test_a_failed_publish_push_fails_the_article(client, published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)

    callback(client, publish_event_xml(article.publish_id, 2))

    article.refresh_from_db()
    assert article.state == ArticleState.FAILED and "original-content check failed" in article.last_error


def test_a_push_for_an_unknown_publish_id_is_matched_in_a_job_not_in_the_request(client, published, fake_wechat):
    news = published()
    lost_submit(fake_wechat, news)
    [pub] = fake_wechat.publishes.values()
    fake_wechat.settle(pub["publish_id"], 0)
    calls_before = len(fake_wechat.calls)

    for _ in range(3):  # WeChat may push it again
        response = callback(client, publish_event_xml(pub["publish_id"], 0, pub["article_id"], pub["urls"][0]))
        assert response.content == b"success"

    assert len(fake_wechat.calls) == calls_before  # nothing asked of WeChat inside the request
    assert WechatArticle.objects.get(news=news).state == ArticleState.CHECKING
    [job] = Job.objects.filter(job_type=WECHAT_PUSH_MATCH)  # one job, however often it was pushed
    assert job.payload["publish_id"] == str(pub["publish_id"]) and job.state == JobState.PENDING

    result = wechat_match_push(**{k: v for k, v in job.payload.items()} | {
        "received_at": timezone.now()})

    article = WechatArticle.objects.get(news=news)
    assert result == f"publish {pub['publish_id']} is news {news.pk}'s (marker found): published"
    assert article.state == ArticleState.PUBLISHED and article.publish_id == str(pub["publish_id"])
    assert article.article_id == pub["article_id"] and article.article_url == pub["urls"][0]
    assert fake_wechat.count("freepublish/getarticle") == 1 and fake_wechat.count("freepublish/submit") == 1
    assert publish(article) == "article is published; nothing to do"


def test_a_push_whose_content_is_not_ours_settles_nothing(published, fake_wechat):
    news = published()
    lost_submit(fake_wechat, news, "close")  # ours never reached WeChat
    other = fake_wechat.settle(fake_wechat._api_freepublish_submit(  # someone else's publication
        {"media_id": fake_wechat._api_draft_add({"articles": [{"title": "x", "content": "<p>y</p>",
                                                                "thumb_media_id": DEFAULT_THUMB}]}, b"")["media_id"]}
    )["publish_id"], 0)

    result = wechat_match_push(publish_id=str(other["publish_id"]), status=0, article_id=other["article_id"],
                               urls=other["urls"], fail_idx=[], received_at=timezone.now())

    assert result.endswith("is not one of ours")
    assert WechatArticle.objects.get(news=news).state == ArticleState.CHECKING


def test_a_failure_push_for_an_unknown_publish_id_goes_to_a_person_showing_the_failure(published, fake_wechat,
                                                                                        caplog):
    news = published()
    lost_submit(fake_wechat, news)
    [pub] = fake_wechat.publishes.values()
    fake_wechat.settle(pub["publish_id"], 3)  # no article_id in a failure

    result = wechat_match_push(publish_id=str(pub["publish_id"]), status=3, article_id="", urls=[], fail_idx=[1],
                               received_at=timezone.now())

    article = WechatArticle.objects.get(news=news)
    assert "left to a person" in result
    assert article.state == ArticleState.UNKNOWN and article.publish_status == 3 and article.publish_id == ""
    assert "publishing failed (publish_status 3)" in article.last_error
    assert "probably this article" in article.last_error
    assert any(r.getMessage().startswith(f"ALERT wechat_unknown:news:{news.pk}") for r in caplog.records)
    with pytest.raises(PermanentError, match="publishing failed"):
        publish(article)  # its job goes dead: the dead-jobs alert
    assert fake_wechat.count("freepublish/submit") == 1 and len(fake_wechat.drafts) == 1


def test_the_callback_acknowledges_other_messages_and_refuses_entities(client, fake_wechat):
    text = b"<xml><MsgType><![CDATA[text]]></MsgType><Content>hi</Content></xml>"
    assert callback(client, text).content == b"success"
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><xml>&a;</xml>'
    assert callback(client, bomb).status_code == 400


# ---------------------------------------------------------------- admin


def test_the_admin_lists_articles_and_retries_a_failed_one(admin_client, published, fake_wechat):
    news = published(title="x" * 40)
    with pytest.raises(PermanentError):
        wechat_draft_create(news_id=news.pk)
    article = WechatArticle.objects.get(news=news)
    Job.objects.filter(subject=f"news:{news.pk}").update(state=JobState.DEAD, live_key=None)

    assert admin_client.get("/admin/wechat/wechatarticle/").status_code == 200
    response = admin_client.post("/admin/wechat/wechatarticle/", {"action": "retry", "_selected_action": [article.pk]})

    assert response.status_code == 302
    assert WechatArticle.objects.get(pk=article.pk).state == ArticleState.PENDING
    assert Job.objects.get(subject=f"news:{news.pk}", job_type=WECHAT_DRAFT_CREATION, state=JobState.PENDING)


def test_the_news_admin_page_shows_the_items_wechat_life(admin_client, published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)

    page = admin_client.get(f"/admin/news/news/{news.pk}/change/").content.decode()

    assert "WeChat" in page and article.publish_id in page and article.draft_media_id in page
    assert admin_client.get("/admin/wechat/wechatimage/").status_code == 200


def test_publishing_without_an_app_configured_queues_no_wechat_job(settings):
    from jobs.models import Job
    from news.factories import NewsFactory
    from news.services import news_publish

    settings.WECHAT_APP_ID = ""
    news = NewsFactory(push_to_wechat=True)
    assert news_publish(news_id=news.pk) is True
    assert not Job.objects.filter(subject=f"news:{news.pk}", job_type="wechat:draft_creation").exists()
    assert not WechatArticle.objects.filter(news=news).exists()
