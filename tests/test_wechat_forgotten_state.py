"""State WeChat forgot: material or a draft deleted in the account's console, or a fake WeChat
started afresh (the quick start run a second time). The services are called as the job
handlers call them, against the real database and the fake over HTTP, which refuses what it
no longer has with 40007 as WeChat does. What we cached is made again once; a second refusal
is permanent; a new draft is never a second publication."""

import pytest
from django.core.files.base import ContentFile

from jobs.errors import PermanentError, Snooze
from jobs.models import Job, JobState
from news.factories import NewsFactory
from news.services import news_publish
from tests.wechat_fixtures import DEFAULT_THUMB, FakeWechat, fake_wechat  # noqa: F401  (fixture)
from wechat.models import ArticleState, ImageKind, WechatArticle, WechatImage
from wechat.scheduling import WECHAT_DRAFT_CREATION, WECHAT_PUBLISHING
from wechat.services import wechat_draft_create, wechat_publish

pytestmark = pytest.mark.django_db

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def published(fake_wechat, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)

    def make(**fields):
        fields.setdefault("cover_image", ContentFile(JPEG, name="cover.jpg"))
        news = NewsFactory(push_to_wechat=True, **fields)
        news_publish(news_id=news.pk)
        return news

    return make


def article_of(news) -> WechatArticle:
    return WechatArticle.objects.get(news=news)


def publish(article) -> str:
    return wechat_publish(news_id=article.news_id, draft_id=article.draft_media_id)


def publish_to_the_end(fake, news) -> WechatArticle:
    """Submit the article's draft, let WeChat publish it, poll: the article as it ends."""
    article = article_of(news)
    with pytest.raises(Snooze, match="submitted as publish"):
        publish(article)
    fake.settle(article_of(news).publish_id, 0)
    assert publish(article_of(news)) == f"published: {article_of(news).publish_id}"
    return article_of(news)


def test_the_quick_start_run_again_uploads_the_cover_the_new_wechat_never_saw_once_and_publishes(
        published, fake_wechat, settings):
    first = published()
    wechat_draft_create(news_id=first.pk)
    [cover] = WechatImage.objects.filter(kind=ImageKind.THUMB).values_list("media_id", flat=True)
    # A second run: a new fake WeChat, which never had the first run's uploads.
    again = FakeWechat().start()
    try:
        settings.WECHAT_API_BASE_URL = again.base_url
        news = published()  # the same cover bytes: the cached media id is the first run's

        result = wechat_draft_create(news_id=news.pk)

        article = article_of(news)
        assert result == f"draft {article.draft_media_id}" and article.state == ArticleState.DRAFTED
        # 40001 first: the token cached in Redis is the first WeChat's (refreshed once, as always).
        assert [c["result"].get("errcode", 0) for c in again.calls_to("draft/add")] == [40001, 40007, 0]
        assert again.count("material/add_material") == 1  # one re-upload
        assert article.thumb_media_id != cover and article.thumb_media_id in again.materials
        assert list(WechatImage.objects.filter(kind=ImageKind.THUMB).values_list("media_id", flat=True)) == [
            article.thumb_media_id]
        article = publish_to_the_end(again, news)
        assert article.state == ArticleState.PUBLISHED and len(again.publishes) == 1
        assert again.count("freepublish/submit") == 1
    finally:
        again.stop()


def test_a_content_image_wechat_no_longer_has_is_uploaded_again_and_the_draft_retried(published, fake_wechat):
    fake_wechat.images["/img/photo.png"] = (PNG, "image/png")
    source = f"{fake_wechat.root}/img/photo.png"
    first = published(content=f'<p>a</p><img src="{source}">')
    wechat_draft_create(news_id=first.pk)
    old_url = article_of(first).content_images[source]
    fake_wechat.forget(old_url)  # deleted in the console
    news = published(content=f'<p>b</p><img src="{source}">')  # the same image: its URL is cached

    wechat_draft_create(news_id=news.pk)

    article = article_of(news)
    new_url = article.content_images[source]
    assert article.state == ArticleState.DRAFTED and new_url != old_url
    [sent] = fake_wechat.drafts[article.draft_media_id]["articles"]
    assert new_url in sent["content"] and old_url not in sent["content"]
    assert [c["result"].get("errcode", 0) for c in fake_wechat.calls_to("draft/add")] == [0, 40007, 0]
    assert fake_wechat.count("media/uploadimg") == 2
    assert list(WechatImage.objects.filter(kind=ImageKind.CONTENT).values_list("url", flat=True)) == [new_url]
    assert publish_to_the_end(fake_wechat, news).state == ArticleState.PUBLISHED


def test_a_second_refusal_of_the_media_ids_is_permanent(published, fake_wechat):
    fake_wechat.images["/img/photo.png"] = (PNG, "image/png")
    news = published(content=f'<img src="{fake_wechat.root}/img/photo.png">')
    fake_wechat.script("draft/add", 40007, 40007)

    with pytest.raises(PermanentError, match="errcode 40007.*after uploading the cover and content images again"):
        wechat_draft_create(news_id=news.pk)

    article = article_of(news)
    assert article.state == ArticleState.FAILED and "40007" in article.last_error
    assert fake_wechat.count("draft/add") == 2  # retried once, not more
    assert fake_wechat.count("material/add_material") == 2 and fake_wechat.count("media/uploadimg") == 2
    assert not fake_wechat.drafts and not Job.objects.filter(job_type=WECHAT_PUBLISHING).exists()


def test_a_refused_media_id_that_is_not_an_upload_of_ours_is_permanent_at_once(published, fake_wechat, settings):
    settings.WECHAT_DEFAULT_THUMB_MEDIA_ID = DEFAULT_THUMB
    fake_wechat.forget(DEFAULT_THUMB)  # the configured cover was deleted in the console
    news = published(cover_image="")

    with pytest.raises(PermanentError, match="errcode 40007.*WECHAT_DEFAULT_THUMB_MEDIA_ID"):
        wechat_draft_create(news_id=news.pk)

    assert article_of(news).state == ArticleState.FAILED and fake_wechat.count("draft/add") == 1


def test_a_draft_wechat_no_longer_has_at_submit_gets_a_new_draft_and_exactly_one_publication(published,
                                                                                              fake_wechat):
    news = published()
    wechat_draft_create(news_id=news.pk)
    old = article_of(news)
    fake_wechat.forget_draft(old.draft_media_id)  # deleted from the draft box in the console

    result = publish(old)

    assert result.startswith(f"draft {old.draft_media_id} is no longer at WeChat") and "40007" in result
    article = article_of(news)
    assert article.state == ArticleState.PENDING and article.draft_media_id == "" and article.publish_id == ""
    assert Job.objects.get(job_type=WECHAT_DRAFT_CREATION, subject=f"news:{news.pk}",
                           state=JobState.PENDING)
    assert wechat_draft_create(news_id=news.pk).startswith("draft DRAFT_")
    new = article_of(news)
    assert new.draft_media_id not in ("", old.draft_media_id)
    assert Job.objects.get(job_type=WECHAT_PUBLISHING, state=JobState.PENDING).payload["draft_id"] == \
        new.draft_media_id
    assert publish(old) == "stale: the article has another draft"  # the old job run again sends nothing

    assert publish_to_the_end(fake_wechat, news).state == ArticleState.PUBLISHED
    assert [c["result"].get("errcode", 0) for c in fake_wechat.calls_to("freepublish/submit")] == [40007, 0]
    assert len(fake_wechat.publishes) == 1 and fake_wechat.count("draft/add") == 2
    assert fake_wechat.count("material/add_material") == 1  # the cover was still there: reused


def test_a_new_draft_refused_at_submit_again_is_permanent_and_publishes_nothing(published, fake_wechat):
    news = published()
    wechat_draft_create(news_id=news.pk)
    fake_wechat.forget_draft(article_of(news).draft_media_id)
    assert "a new draft is being created" in publish(article_of(news))
    wechat_draft_create(news_id=news.pk)
    fake_wechat.forget_draft(article_of(news).draft_media_id)  # deleted again

    with pytest.raises(PermanentError, match="errcode 40007.*new draft .* was refused too"):
        publish(article_of(news))

    article = article_of(news)
    assert article.state == ArticleState.FAILED and article.publish_id == ""
    assert fake_wechat.count("freepublish/submit") == 2 and not fake_wechat.publishes
    assert fake_wechat.count("draft/add") == 2


def test_a_submit_with_no_answer_is_never_followed_by_a_new_draft(published, fake_wechat):
    news = published()
    wechat_draft_create(news_id=news.pk)
    Job.objects.filter(job_type=WECHAT_DRAFT_CREATION).update(state=JobState.COMPLETED, live_key=None)
    fake_wechat.script("freepublish/submit", "drop")  # accepted, the answer lost

    with pytest.raises(Snooze, match="never submitted again"):
        publish(article_of(news))

    article = article_of(news)
    assert article.state == ArticleState.CHECKING and article.redrafts == 0
    assert fake_wechat.count("freepublish/submit") == 1 and fake_wechat.count("draft/add") == 1
    assert not Job.objects.filter(job_type=WECHAT_DRAFT_CREATION, state=JobState.PENDING).exists()
