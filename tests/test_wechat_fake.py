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
from tests.wechat_fixtures import APP_ID, APP_SECRET, DEFAULT_THUMB, fake_wechat, signature  # noqa: F401  (fixture)
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


def test_the_draft_stays_in_the_box_while_publishing_and_leaves_it_once_published(fake_wechat):
    fake_wechat.publish_polls = 2
    c = client(fake_wechat)
    draft = c.add_draft([ARTICLE])
    publish_id = c.submit_publish(draft)

    first = c.get_publish_status(publish_id)
    assert first["publish_status"] == 1 and "article_id" not in first
    assert c.get_draft(draft)[0]["title"] == ARTICLE["title"] and c.count_drafts() == 1  # still in the box
    assert c.list_published()["item"] == []  # batchget: successes only

    second = c.get_publish_status(publish_id)
    assert second["publish_status"] == 0
    assert second["article_detail"]["item"][0]["article_url"].startswith("https://mp.weixin.qq.com/s/")
    with pytest.raises(WechatPermanentError) as gone:
        c.get_draft(draft)
    assert gone.value.errcode == 40007 and c.count_drafts() == 0
    [item] = c.list_published()["item"]
    assert item["article_id"] == second["article_id"]
    assert item["content"]["news_item"][0]["url"] == second["article_detail"]["item"][0]["article_url"]
    with pytest.raises(WechatPermanentError) as again:
        c.submit_publish(draft)  # not in the box any more
    assert again.value.errcode == 40007


def test_material_and_drafts_deleted_in_the_console_are_refused_with_40007(fake_wechat):
    c = client(fake_wechat)
    cover = c.add_thumb_material(Upload("cover.jpg", JPEG))
    image = c.upload_article_image(Upload("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64))
    draft = c.add_draft([{**ARTICLE, "thumb_media_id": cover, "content": f'<p>x</p><img src="{image}">'}])
    fake_wechat.forget(cover)
    fake_wechat.forget(image)
    fake_wechat.forget_draft(draft)

    refused = []
    for article in ({**ARTICLE, "thumb_media_id": cover}, {**ARTICLE, "content": f'<img src="{image}">'}):
        with pytest.raises(WechatPermanentError) as caught:
            c.add_draft([article])
        refused.append(caught.value.errcode)
    with pytest.raises(WechatPermanentError) as submit:
        c.submit_publish(draft)

    assert refused == [40007, 40007] and submit.value.errcode == 40007 and fake_wechat.publishes == {}
    # An image URL of WeChat's that this fake never handed out is not its to refuse.
    c.add_draft([{**ARTICLE, "content": '<img src="http://mmbiz.qpic.cn/mmbiz_png/other/0">'}])


def test_a_fake_started_afresh_hands_out_ids_the_one_before_never_did(fake_wechat):
    from devtools.wechat_fake import FakeWechat

    again = FakeWechat().start()
    try:
        first = client(fake_wechat).add_thumb_material(Upload("cover.jpg", JPEG))
        get_redis().flushdb()  # the other WeChat's token
        second = client(again).add_thumb_material(Upload("cover.jpg", JPEG))
        assert first != second
        with pytest.raises(WechatPermanentError) as caught:
            client(again).add_draft([{**ARTICLE, "thumb_media_id": first}])
        assert caught.value.errcode == 40007
    finally:
        again.stop()


def test_a_second_submit_while_publishing_publishes_twice(fake_wechat):
    """What WeChat does and the project must never do: submit is not idempotent."""
    c = client(fake_wechat)
    draft = c.add_draft([ARTICLE])
    first, second = c.submit_publish(draft), c.submit_publish(draft)
    fake_wechat.settle(first, 0), fake_wechat.settle(second, 0)

    assert first != second and len(c.list_published()["item"]) == 2


def test_getarticle_returns_a_publications_content_by_article_id(fake_wechat):
    c = client(fake_wechat)
    draft = c.add_draft([{**ARTICLE, "content": "<p>正文</p><!--marker-1-->"}])
    pub = fake_wechat.settle(c.submit_publish(draft), 0)

    [item] = c.get_article(pub["article_id"])

    assert "<!--marker-1-->" in item["content"] and item["url"] == pub["urls"][0] and item["is_deleted"] is False
    with pytest.raises(WechatPermanentError) as unknown:
        c.get_article("ART_nope")
    assert unknown.value.errcode == 53600


@pytest.mark.parametrize("status", [2, 3, 4])
def test_a_failed_publication_is_not_listed_and_keeps_its_draft(fake_wechat, status):
    c = client(fake_wechat)
    draft = c.add_draft([ARTICLE])
    publish_id = c.submit_publish(draft)
    fake_wechat.settle(publish_id, status)

    answer = c.get_publish_status(publish_id)
    assert answer["publish_status"] == status and answer["fail_idx"] == [1] and "article_id" not in answer
    assert c.list_published()["item"] == [] and c.get_draft(draft)


@pytest.mark.parametrize("status", [5, 6])
def test_a_publication_deleted_or_banned_later_says_so(fake_wechat, status):
    c = client(fake_wechat)
    publish_id = c.submit_publish(c.add_draft([ARTICLE]))
    pub = fake_wechat.settle(publish_id, 0)

    fake_wechat.unpublish(publish_id, status)

    assert c.get_publish_status(publish_id)["publish_status"] == status
    assert c.get_article(pub["article_id"])[0]["is_deleted"] is True
    assert c.list_published()["item"][0]["content"]["news_item"][0]["is_deleted"] is True


def test_publications_settle_after_the_configured_time(fake_wechat):
    fake_wechat.publish_seconds, fake_wechat.publish_status = 0.5, 3
    c = client(fake_wechat)
    publish_id = c.submit_publish(c.add_draft([ARTICLE]))
    assert c.get_publish_status(publish_id)["publish_status"] == 1

    wait_for(lambda: c.get_publish_status(publish_id)["publish_status"] == 3, 10, 0.1, "the publication to fail")


def test_a_failed_publication_leaves_the_draft_in_the_box(fake_wechat):
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


# ---------------------------------------------------------------- as strict as the documentation


def token_body(**extra):
    return {"grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET, **extra}


def test_token_and_stable_token_are_separate_and_do_not_invalidate_each_other(fake_wechat):
    fake_wechat.old_token_grace = 0
    get_plain = lambda: requests.get(f"{fake_wechat.base_url}/cgi-bin/token", params={  # noqa: E731
        "grant_type": "client_credential", "appid": APP_ID, "secret": APP_SECRET}).json()["access_token"]
    stable = raw(fake_wechat, "stable_token", **token_body())["access_token"]
    plain = get_plain()

    assert plain != stable
    get_plain()  # a new plain token: the previous plain one stops (grace 0), the stable one does not
    assert raw(fake_wechat, "draft/count", plain)["errcode"] == 40001
    assert raw(fake_wechat, "draft/count", stable) == {"total_count": 0}
    assert raw(fake_wechat, "stable_token", **token_body())["access_token"] == stable


def test_stable_token_force_refresh_is_limited_to_every_30_s_and_20_a_day(fake_wechat):
    first = raw(fake_wechat, "stable_token", **token_body())["access_token"]
    forced = raw(fake_wechat, "stable_token", **token_body(force_refresh=True))["access_token"]
    too_soon = raw(fake_wechat, "stable_token", **token_body(force_refresh=True))["access_token"]

    assert forced != first and too_soon == forced  # within 30 s: the current one
    fake_wechat.force_refresh_gap = 0
    fake_wechat.exhaust_quota("stable_token:force_refresh")
    assert raw(fake_wechat, "stable_token", **token_body(force_refresh=True))["errcode"] == 45009


@pytest.mark.parametrize("field, value, errcode", [
    ("title", "题" * 22, 45003),   # 22 characters (under 32) but 66 bytes (over 64)
    ("author", "作" * 9, 45110),   # 9 characters (under 16) but 27 bytes (over 24)
    ("digest", "摘" * 121, 45004),  # 121 characters (under 128) but 363 bytes (over 360)
])
def test_text_limits_are_counted_in_characters_and_in_bytes(fake_wechat, field, value, errcode):
    with pytest.raises(WechatPermanentError) as caught:
        client(fake_wechat).add_draft([{**ARTICLE, field: value}])
    assert caught.value.errcode == errcode
    client(fake_wechat).add_draft([{**ARTICLE, field: value[:-2]}])  # just under: accepted


def test_uploadimg_refuses_other_types_with_40005(fake_wechat):
    with pytest.raises(WechatPermanentError) as caught:
        client(fake_wechat).upload_article_image(Upload("x.gif", b"GIF89a"))
    assert caught.value.errcode == 40005


def test_a_literal_backslash_u_is_fine_but_an_escaped_title_is_refused(fake_wechat):
    c = client(fake_wechat)
    media_id = c.add_draft([{**ARTICLE, "content": r"<p>C:\users\u1234 is a path</p>", "title": r"a \u6807 b"}])
    assert r"\u1234" in fake_wechat.drafts[media_id]["articles"][0]["content"]

    token = c.access_token()
    body = json.dumps({"articles": [{**ARTICLE, "title": "标题"}]}, ensure_ascii=True)  # "\u6807\u9898"
    answer = requests.post(f"{fake_wechat.base_url}/cgi-bin/draft/add", params={"access_token": token},
                           data=body.encode()).json()
    assert answer["errcode"] == 45003
    content_escaped = json.dumps({"articles": [{**ARTICLE, "title": "t", "author": "a", "content": "<p>正文</p>"}]},
                                 ensure_ascii=True)
    answer = requests.post(f"{fake_wechat.base_url}/cgi-bin/draft/add", params={"access_token": token},
                           data=content_escaped.encode()).json()
    assert "media_id" in answer  # escapes are refused in title and author only


class Receiver:
    """A callback URL for the fake's pushes: answers each request after `delays` (one per
    request, then none), records what came."""

    def __init__(self, delays=()):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading

        self.delays, self.got = list(delays), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.got.append((self.path, body))
                if receiver.delays:
                    time.sleep(receiver.delays.pop(0))
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "7")
                    self.end_headers()
                    self.wfile.write(b"success")
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_push_not_answered_in_time_is_retried_three_times(fake_wechat):
    receiver = Receiver(delays=[1.0, 1.0, 1.0, 0])
    try:
        fake_wechat.callback_url, fake_wechat.callback_token = receiver.url, "tok"
        fake_wechat.push_timeout = 0.3  # WeChat waits 5 s; shortened here
        c = client(fake_wechat)
        publish_id = c.submit_publish(c.add_draft([ARTICLE]))
        fake_wechat.settle(publish_id, 0)

        wait_for(lambda: len(fake_wechat.pushes) == 4, 15, 0.05, "four push attempts")
        assert [p["attempt"] for p in fake_wechat.pushes] == [1, 2, 3, 4]
        assert [p["http_status"] for p in fake_wechat.pushes] == ["ReadTimeout"] * 3 + [200]
        assert len({path for path, _ in receiver.got}) == 1  # the same signed URL each time
    finally:
        receiver.stop()


@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
def test_pushes_in_each_mode_carry_what_wechat_sends(fake_wechat, mode):
    from urllib.parse import parse_qs, urlsplit

    from wechat.crypto import WechatCrypto

    key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    receiver = Receiver()
    try:
        fake_wechat.callback_url, fake_wechat.callback_token = receiver.url, "tok"
        fake_wechat.callback_mode, fake_wechat.encoding_aes_key = mode, key
        c = client(fake_wechat)
        publish_id = c.submit_publish(c.add_draft([ARTICLE]))
        fake_wechat.settle(publish_id, 0)
        wait_for(lambda: receiver.got, 10, 0.05, "the push")
    finally:
        receiver.stop()
    [(path, body)] = receiver.got
    query = {k: v[0] for k, v in parse_qs(urlsplit(path).query).items()}
    assert query["signature"] == signature("tok", query["timestamp"], query["nonce"])
    has_plain, has_encrypt = b"PUBLISHJOBFINISH" in body, b"<Encrypt>" in body
    assert (has_plain, has_encrypt) == {"plaintext": (True, False), "compatible": (True, True),
                                        "safe": (False, True)}[mode]
    if mode != "plaintext":
        import re

        assert query["encrypt_type"] == "aes"
        encrypt = re.search(rb"<Encrypt><!\[CDATA\[(.*?)\]\]></Encrypt>", body).group(1).decode()
        crypto = WechatCrypto(token="tok", encoding_aes_key=key, app_id=APP_ID)
        crypto.check_signature(query["msg_signature"], query["timestamp"], query["nonce"], encrypt)
        assert f"<publish_id>{publish_id}</publish_id>".encode() in crypto.decrypt(encrypt)
