"""The fake WeChat is what every other WeChat test and the quick start stand on: it must
answer as the real API does (shapes, limits, quotas, tokens), and `manage.py fake_wechat`
must serve the quick start's credentials."""

import json
import socket
import subprocess
import sys
import time

import pytest
import requests

from nextevent.redis import get_redis

from tests.conftest import ROOT, wait_for
from tests.wechat_fixtures import APP_ID, APP_SECRET, DEFAULT_THUMB, fake_wechat  # noqa: F401  (fixture)
from wechat.client import (
    Upload,
    WechatClient,
    WechatConfigError,
    WechatOutcomeUnknown,
    WechatPermanentError,
    WechatQuotaExhausted,
)

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
ARTICLE = {"title": "标题", "author": "作者", "digest": "摘要", "content": "<p>正文</p>", "thumb_media_id": DEFAULT_THUMB}


def client(fake, app_id=APP_ID, app_secret=APP_SECRET) -> WechatClient:
    return WechatClient(app_id=app_id, app_secret=app_secret, base_url=fake.base_url)


def raw(fake, api, token=None, **body) -> dict:
    params = {"access_token": token} if token else {}
    return requests.post(f"{fake.base_url}/cgi-bin/{api}", params=params, data=json.dumps(body)).json()


@pytest.mark.parametrize("field, value, errcode", [
    ("title", "题" * 33, 45003),
    ("digest", "摘" * 129, 45004),
    ("author", "作" * 17, 45110),
    ("content", "正" * 20000, 45166),
    ("thumb_media_id", "MAT_nope", 40007),
    ("content_source_url", "https://example.com/" + "x" * 1024, 45005),
])
def test_draft_add_enforces_the_field_limits(fake_wechat, field, value, errcode):
    with pytest.raises(WechatPermanentError) as caught:
        client(fake_wechat).add_draft([{**ARTICLE, field: value}])
    assert caught.value.errcode == errcode and fake_wechat.drafts == {}


def test_a_cover_must_be_a_small_jpg_with_its_extension(fake_wechat):
    c = client(fake_wechat)
    with pytest.raises(WechatPermanentError) as not_jpg:
        c.add_thumb_material(Upload("cover.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64))
    with pytest.raises(WechatPermanentError) as no_extension:
        c.add_thumb_material(Upload("cover", JPEG))
    with pytest.raises(WechatPermanentError) as too_big:
        c.add_thumb_material(Upload("cover.jpg", JPEG + b"\x00" * 64 * 1024))

    assert (not_jpg.value.errcode, no_extension.value.errcode, too_big.value.errcode) == (40113, 40113, 45001)
    media_id = c.add_thumb_material(Upload("cover.jpg", JPEG))
    assert fake_wechat.materials[media_id] == {"type": "thumb", "data": JPEG, "filename": "cover.jpg"}


def test_the_plain_token_api_replaces_the_token_and_the_old_one_stops_working(fake_wechat):
    fake_wechat.old_token_grace = 0
    get = lambda: requests.get(f"{fake_wechat.base_url}/cgi-bin/token", params={  # noqa: E731
        "grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}).json()
    first = get()["access_token"]
    assert raw(fake_wechat, "draft/count", first) == {"total_count": 0}

    second = get()["access_token"]

    assert second != first and raw(fake_wechat, "draft/count", first)["errcode"] == 40001
    assert raw(fake_wechat, "draft/count", second) == {"total_count": 0}


def test_stable_token_returns_the_current_token_with_its_remaining_life(fake_wechat):
    body = {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}
    first, again = raw(fake_wechat, "stable_token", **body), raw(fake_wechat, "stable_token", **body)
    forced = raw(fake_wechat, "stable_token", **body, force_refresh=True)

    assert again["access_token"] == first["access_token"] and again["expires_in"] <= 7200
    assert forced["access_token"] != first["access_token"]
    assert raw(fake_wechat, "draft/count", first["access_token"])["errcode"] == 40001
    assert raw(fake_wechat, "stable_token", **{**body, "appid": "wx-other"})["errcode"] == 40013


def test_each_api_has_a_daily_quota(fake_wechat):
    fake_wechat.quotas["draft/add"] = 2
    c = client(fake_wechat)
    c.add_draft([ARTICLE]), c.add_draft([ARTICLE])

    with pytest.raises(WechatQuotaExhausted) as caught:
        c.add_draft([ARTICLE])
    assert caught.value.errcode == 45009
    fake_wechat.reset_quotas()
    c.add_draft([ARTICLE])
    assert len(fake_wechat.drafts) == 3


def test_a_submit_takes_the_draft_out_of_the_box_and_publishing_settles_after_n_polls(fake_wechat):
    fake_wechat.publish_polls = 2
    c = client(fake_wechat)
    draft = c.add_draft([ARTICLE])
    publish_id = c.submit_publish(draft)

    with pytest.raises(WechatPermanentError) as gone:
        c.get_draft(draft)
    first, second = c.get_publish_status(publish_id), c.get_publish_status(publish_id)

    assert gone.value.errcode == 40007 and c.count_drafts() == 0
    assert first["publish_status"] == 1 and second["publish_status"] == 0
    assert second["article_detail"]["item"][0]["article_url"].startswith("https://mp.weixin.qq.com/s/")
    [item] = c.list_published()["item"]
    assert item["article_id"] == second["article_id"]
    assert item["content"]["news_item"][0]["url"] == second["article_detail"]["item"][0]["article_url"]
    with pytest.raises(WechatPermanentError) as again:
        c.submit_publish(draft)  # not in the box any more
    assert again.value.errcode == 40007


def test_a_failed_publication_puts_the_draft_back_in_the_box(fake_wechat):
    c = client(fake_wechat)
    draft = c.add_draft([ARTICLE])
    fake_wechat.settle(c.submit_publish(draft), 3)

    assert c.get_draft(draft)[0]["title"] == ARTICLE["title"] and c.list_published()["item"] == []


def test_a_closed_connection_does_nothing_and_a_dropped_one_does_the_work(fake_wechat):
    c = client(fake_wechat)
    fake_wechat.script("draft/add", "close", "drop")

    for _ in range(2):
        with pytest.raises(WechatOutcomeUnknown):
            c.add_draft([ARTICLE])
    assert len(fake_wechat.drafts) == 1


def test_manage_py_fake_wechat_serves_the_quick_starts_account(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "fake.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "fake_wechat", "--port", str(port),
                             "--app-id", "wxdemo0000000000", "--app-secret", "demo-secret", "--publish-seconds", "0.2"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(f"{base}/cgi-bin/draft/count", timeout=1).status_code == 200
            except requests.ConnectionError:
                assert proc.poll() is None, (tmp_path / "fake.log").read_text()
                return False

        wait_for(up, 20, 0.1, "the fake to listen")
        c = WechatClient(app_id="wxdemo0000000000", app_secret="demo-secret", base_url=base)
        thumb = c.add_thumb_material(Upload("cover.jpg", JPEG))
        publish_id = c.submit_publish(c.add_draft([{**ARTICLE, "thumb_media_id": thumb}]))
        time.sleep(0.3)
        assert c.get_publish_status(publish_id)["publish_status"] == 0
        get_redis().delete("wechat:access_token:wxdemo0000000000")  # else the cached token serves
        with pytest.raises(WechatConfigError, match="40125"):
            WechatClient(app_id="wxdemo0000000000", app_secret="wrong", base_url=base,
                         ).add_thumb_material(Upload("cover.jpg", JPEG))
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    output = (tmp_path / "fake.log").read_text()
    assert f"fake WeChat API on {base}" in output and "demo-secret" not in output
