"""The WeChat services, called as the job handlers call them, against the real database and
the fake WeChat over HTTP: what each stage sends, what a repeated run does (jobs run at least
once) and how WeChat's answers become job outcomes. Also the callback URL."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from jobs.errors import PermanentError, Snooze
from jobs.models import Job, JobState
from jobs.types import WECHAT_DRAFT_CREATION, WECHAT_PUBLISHING
from news.factories import NewsFactory
from news.services import news_publish
from tests.wechat_fake import DEFAULT_THUMB, callback, fake_wechat, publish_event_xml  # noqa: F401  (fixture)
from wechat.client import WechatTransientError
from wechat.models import ArticleState, WechatArticle
from wechat.services import (
    next_quota_reset,
    wechat_draft_create,
    wechat_publish,
    wechat_resolve_unknown,
    wechat_retry,
)

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def published(fake_wechat, settings, tmp_path):
    """A news item marked for WeChat, just published: its article waits for its draft."""
    settings.MEDIA_ROOT = str(tmp_path)

    def make(**fields):
        fields.setdefault("cover_image", ContentFile(PNG, name="cover.png"))
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


# ---------------------------------------------------------------- starting


def test_publishing_an_item_marked_for_wechat_queues_its_draft(published):
    news = published()

    article = WechatArticle.objects.get(news=news)
    assert article.state == ArticleState.PENDING
    job = Job.objects.get(news_id=news.pk, job_type=WECHAT_DRAFT_CREATION)
    assert job.state == JobState.PENDING and job.queue == "wechat"


def test_publishing_an_item_not_marked_for_wechat_sends_nothing(fake_wechat):
    news = NewsFactory(push_to_wechat=False)
    news_publish(news_id=news.pk)

    assert not WechatArticle.objects.exists()
    assert not Job.objects.filter(job_type=WECHAT_DRAFT_CREATION).exists()


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
    [sent] = fake_wechat.drafts[article.draft_media_id]
    assert sent["title"] == "发布会" and sent["author"] == "编辑部" and "digest" not in sent
    assert fake_wechat.materials[sent["thumb_media_id"]] == PNG
    assert outside not in sent["content"] and on_wechat in sent["content"]
    assert sent["content"].count(article.content_images[outside]) == 2
    assert fake_wechat.count("media/uploadimg") == 1  # the same image twice is uploaded once
    job = Job.objects.get(news_id=news.pk, job_type=WECHAT_PUBLISHING)
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
    wechat_draft_create(news_id=news.pk)

    assert fake_wechat.count("draft/add") == 2
    assert fake_wechat.count("material/add_material") == 1 and fake_wechat.count("media/uploadimg") == 1
    assert WechatArticle.objects.get(news=news).state == ArticleState.DRAFTED


def test_a_title_too_long_for_wechat_fails_before_anything_is_uploaded(published, fake_wechat):
    news = published(title="x" * 33)

    with pytest.raises(PermanentError, match="title: 33 characters; WeChat takes at most 32"):
        wechat_draft_create(news_id=news.pk)
    assert WechatArticle.objects.get(news=news).state == ArticleState.FAILED
    assert fake_wechat.calls == []


def test_an_item_without_a_cover_uses_the_default_cover(published, fake_wechat, settings):
    settings.WECHAT_DEFAULT_THUMB_MEDIA_ID = DEFAULT_THUMB
    news = published(cover_image="")

    article = drafted(fake_wechat, news)

    assert fake_wechat.drafts[article.draft_media_id][0]["thumb_media_id"] == DEFAULT_THUMB


def test_an_item_without_any_cover_fails_naming_the_setting(published):
    news = published(cover_image="")

    with pytest.raises(PermanentError, match="WECHAT_DEFAULT_THUMB_MEDIA_ID"):
        wechat_draft_create(news_id=news.pk)


def test_a_missing_content_image_fails_naming_its_url(published, fake_wechat):
    news = published(content=f'<img src="{fake_wechat.root}/img/gone.png">')

    with pytest.raises(PermanentError, match="gone.png: HTTP 404"):
        wechat_draft_create(news_id=news.pk)


def test_with_auto_publish_off_it_stops_at_the_draft(published, fake_wechat, settings):
    settings.WECHAT_AUTO_PUBLISH = False
    news = published()

    assert "WECHAT_AUTO_PUBLISH is off" in wechat_draft_create(news_id=news.pk)
    assert not Job.objects.filter(job_type=WECHAT_PUBLISHING).exists()


def test_an_exhausted_daily_quota_waits_for_midnight_in_beijing(published, fake_wechat):
    news = published()
    fake_wechat.script("draft/add", 45009)

    with pytest.raises(Snooze) as caught:
        wechat_draft_create(news_id=news.pk)
    assert caught.value.until == next_quota_reset()
    assert WechatArticle.objects.get(news=news).state == ArticleState.PENDING


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
        wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)

    assert fake_wechat.count("freepublish/submit") == 1 and fake_wechat.count("freepublish/get") == 1


def test_polling_records_the_published_article(published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    fake_wechat.settle(article.publish_id, 0)

    assert wechat_publish(news_id=news.pk, draft_id=article.draft_media_id) == f"published: {article.publish_id}"

    article.refresh_from_db()
    assert article.state == ArticleState.PUBLISHED and article.publish_status == 0
    assert article.article_url == f"https://mp.weixin.qq.com/s/fake{article.publish_id}"
    assert wechat_publish(news_id=news.pk, draft_id=article.draft_media_id) == "article is published; nothing to do"
    assert fake_wechat.count("freepublish/get") == 1


def test_a_publish_wechat_rejects_fails_the_article(published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    fake_wechat.settle(article.publish_id, 3)

    with pytest.raises(PermanentError, match=r"publishing failed \(publish_status 3\).*\[1\]"):
        wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)
    assert WechatArticle.objects.get(news=news).state == ArticleState.FAILED


def test_polling_stops_after_the_configured_number_of_polls(published, fake_wechat, settings):
    settings.WECHAT_MAX_POLLS = 2
    news = published()
    article = submitted(fake_wechat, news)
    for _ in range(2):
        with pytest.raises(Snooze):
            wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)

    with pytest.raises(PermanentError, match="after 2 polls"):
        wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)
    assert fake_wechat.count("freepublish/get") == 2
    assert WechatArticle.objects.get(news=news).state == ArticleState.PUBLISHING  # a late push can settle it


def test_a_submit_whose_answer_was_lost_is_never_repeated(published, fake_wechat):
    news = published()
    article = drafted(fake_wechat, news)
    fake_wechat.script("freepublish/submit", "drop")

    with pytest.raises(PermanentError, match="outcome unknown"):
        wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)
    assert WechatArticle.objects.get(news=news).state == ArticleState.UNKNOWN
    assert wechat_publish(news_id=news.pk, draft_id=article.draft_media_id) == "article is unknown; nothing to do"
    assert wechat_retry(news_id=news.pk) == f"news {news.pk}: not retried, article is unknown"

    assert fake_wechat.count("freepublish/submit") == 1


def test_an_attempt_that_died_during_submit_is_not_repeated(published, fake_wechat):
    news = published()
    article = drafted(fake_wechat, news)
    WechatArticle.objects.filter(pk=article.pk).update(state=ArticleState.SUBMITTING)  # as a killed worker left it

    with pytest.raises(PermanentError, match="stopped during freepublish/submit"):
        wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)

    assert WechatArticle.objects.get(news=news).state == ArticleState.UNKNOWN
    assert fake_wechat.count("freepublish/submit") == 0


def test_a_person_who_found_it_unpublished_can_submit_again(published, fake_wechat):
    news = published()
    article = drafted(fake_wechat, news)
    fake_wechat.script("freepublish/submit", -1)  # refused: the draft stays submittable
    with pytest.raises(WechatTransientError):
        wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)
    assert WechatArticle.objects.get(news=news).state == ArticleState.DRAFTED
    WechatArticle.objects.filter(pk=article.pk).update(state=ArticleState.UNKNOWN)
    Job.objects.filter(job_type=WECHAT_PUBLISHING).update(state=JobState.DEAD, live_key=None)

    assert wechat_resolve_unknown(news_id=news.pk, published=False)

    assert WechatArticle.objects.get(news=news).state == ArticleState.DRAFTED
    assert Job.objects.get(job_type=WECHAT_PUBLISHING, state=JobState.PENDING).payload["draft_id"] == \
        article.draft_media_id
    assert not wechat_resolve_unknown(news_id=news.pk, published=True)  # no longer unknown


def test_retrying_a_failed_article_starts_over_with_a_new_draft(published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    fake_wechat.settle(article.publish_id, 4)
    with pytest.raises(PermanentError):
        wechat_publish(news_id=news.pk, draft_id=article.draft_media_id)
    Job.objects.filter(news_id=news.pk).update(state=JobState.DEAD, live_key=None)

    assert wechat_retry(news_id=news.pk) == f"news {news.pk}: draft creation queued"
    new = drafted(fake_wechat, news)

    assert new.draft_media_id != article.draft_media_id and new.publish_id == ""
    assert fake_wechat.count("material/add_material") == 1  # the cover is reused
    assert wechat_publish(news_id=news.pk, draft_id=article.draft_media_id) == \
        "stale: the article has another draft"


# ---------------------------------------------------------------- the callback URL


def test_the_callback_answers_wechats_server_check(client, fake_wechat):
    response = callback(client, method="get", echostr="abc123")

    assert response.status_code == 200 and response.content == b"abc123"


def test_the_callback_refuses_a_bad_signature(client, fake_wechat):
    response = callback(client, publish_event_xml(1), token="not-the-token")

    assert response.status_code == 403


def test_a_publish_push_settles_the_article_and_wakes_its_job(client, published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)
    job = Job.objects.get(job_type=WECHAT_PUBLISHING, news_id=news.pk)
    Job.objects.filter(pk=job.pk).update(state=JobState.SCHEDULED, run_at=timezone.now() + timedelta(hours=1))

    for _ in range(2):  # WeChat may push the same event again
        response = callback(client, publish_event_xml(article.publish_id, 0, "ART_9", "https://mp.weixin.qq.com/s/x"))
        assert response.status_code == 200 and response.content == b"success"

    article.refresh_from_db()
    assert article.state == ArticleState.PUBLISHED and article.article_id == "ART_9"
    assert article.article_url == "https://mp.weixin.qq.com/s/x"
    job.refresh_from_db()
    assert job.run_at <= timezone.now()  # woken: it finishes now instead of at its next poll
    assert fake_wechat.count("freepublish/get") == 0


def test_a_failed_publish_push_fails_the_article(client, published, fake_wechat):
    news = published()
    article = submitted(fake_wechat, news)

    callback(client, publish_event_xml(article.publish_id, 2))

    article.refresh_from_db()
    assert article.state == ArticleState.FAILED and "original-content check failed" in article.last_error


def test_the_callback_acknowledges_other_messages_and_refuses_entities(client, fake_wechat):
    text = b"<xml><MsgType><![CDATA[text]]></MsgType><Content>hi</Content></xml>"
    assert callback(client, text).content == b"success"
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><xml>&a;</xml>'
    assert callback(client, bomb).status_code == 400


def test_the_admin_lists_articles_and_retries_a_failed_one(admin_client, published, fake_wechat):
    news = published(title="x" * 40)
    with pytest.raises(PermanentError):
        wechat_draft_create(news_id=news.pk)
    article = WechatArticle.objects.get(news=news)
    Job.objects.filter(news_id=news.pk).update(state=JobState.DEAD, live_key=None)

    assert admin_client.get("/admin/wechat/wechatarticle/").status_code == 200
    response = admin_client.post("/admin/wechat/wechatarticle/", {"action": "retry", "_selected_action": [article.pk]})

    assert response.status_code == 302
    assert WechatArticle.objects.get(pk=article.pk).state == ArticleState.PENDING
    assert Job.objects.get(news_id=news.pk, job_type=WECHAT_DRAFT_CREATION, state=JobState.PENDING)
