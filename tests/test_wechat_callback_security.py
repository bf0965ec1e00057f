"""The callback URL under attack: replays, forged pushes and
junk bodies are refused with a 4xx naming the problem, against the real database and Redis,
and a refused request changes no article."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest
from django.forms.models import model_to_dict

from tests.wechat_fixtures import CALLBACK_TOKEN, callback, fake_wechat, publish_event_xml  # noqa: F401
from devtools.wechat_fake import signature
from wechat.models import ArticleState, WechatArticle

pytestmark = pytest.mark.django_db


@pytest.fixture
def publishing(fake_wechat):
    """An article waiting for WeChat to publish it (as after a successful submit)."""
    from news.factories import NewsFactory

    news = NewsFactory(push_to_wechat=True)
    return WechatArticle.objects.create(news=news, state=ArticleState.PUBLISHING, draft_media_id="MEDIA_1",
                                        publish_id="2247483647")


def snapshot(article):
    return model_to_dict(WechatArticle.objects.get(pk=article.pk))


def signed_query(timestamp=None, nonce="4242", token=CALLBACK_TOKEN) -> str:
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    return urlencode({"signature": signature(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce})


def post(client, query: str, body: bytes, content_type="text/xml"):
    return client.post(f"/wechat/callback?{query}", body, content_type=content_type)


# ---------------------------------------------------------------- replay and forgery (finding 3)


def test_a_url_signed_long_ago_is_refused(client, publishing):
    before = snapshot(publishing)
    old = int(time.mktime((2001, 9, 9, 0, 0, 0, 0, 0, 0)))

    response = post(client, signed_query(old), publish_event_xml(publishing.publish_id, 0, "A1",
                                                                  "https://mp.weixin.qq.com/s/x"))

    assert response.status_code == 403 and b"WECHAT_CALLBACK_WINDOW" in response.content
    assert snapshot(publishing) == before


def test_a_timestamp_inside_the_configured_window_is_accepted(client, publishing, settings):
    settings.WECHAT_CALLBACK_WINDOW = 60
    assert post(client, signed_query(int(time.time()) - 50), b"<xml/>").status_code == 200
    assert post(client, signed_query(int(time.time()) - 90, nonce="4343"), b"<xml/>").status_code == 403


def test_a_signed_url_is_accepted_once_and_not_reused_with_another_body(client, publishing):
    query = signed_query()
    assert post(client, query, publish_event_xml(publishing.publish_id, 1)).content == b"success"

    forged = post(client, query, publish_event_xml(publishing.publish_id, 0, "A1", "https://mp.weixin.qq.com/s/x"))

    assert forged.status_code == 403 and b"nonce already used" in forged.content
    assert WechatArticle.objects.get(pk=publishing.pk).state == ArticleState.PUBLISHING


def test_the_nonce_is_remembered_in_redis_for_the_window(client, publishing, settings):
    from nextevent.redis import get_redis

    timestamp = int(time.time())
    post(client, signed_query(timestamp, nonce="777"), b"<xml/>")

    ttl = get_redis().ttl(f"wechat:callback:seen:{timestamp}:777")
    assert 2 * settings.WECHAT_CALLBACK_WINDOW <= ttl <= 2 * settings.WECHAT_CALLBACK_WINDOW + 60


def test_without_redis_to_remember_nonces_the_callback_answers_503_and_changes_nothing(client, publishing, settings):
    from nextevent.redis import get_redis

    before = snapshot(publishing)
    settings.REDIS = {"host": "127.0.0.1", "port": 1, "db": 0, "socket_connect_timeout": 1}
    get_redis.cache_clear()
    try:
        response = callback(client, publish_event_xml(publishing.publish_id, 0, "A1", "https://mp.weixin.qq.com/s/x"))
    finally:
        get_redis.cache_clear()

    assert response.status_code == 503 and b"nonce" in response.content
    assert snapshot(publishing) == before


@pytest.mark.parametrize("url", [
    "javascript:alert(document.cookie)",
    "http://mp.weixin.qq.com/s/x",
    "https://evil.example/s/x",
    "https://mp.weixin.qq.com.evil.example/s/x",
    "https://mp.weixin.qq.com@evil.example/s/x",
    "https://evil.example\\@mp.weixin.qq.com/s/x",
    "https://mp.weixin.qq.com:8443/s/x",
    "https://mp.weixin.qq.com/s/x y",
])
def test_a_pushed_article_url_must_be_https_on_wechats_host(client, publishing, url):
    before = snapshot(publishing)

    response = callback(client, publish_event_xml(publishing.publish_id, 0, "A1", url))

    assert response.status_code == 400 and b"article_url" in response.content
    assert snapshot(publishing) == before


def test_a_push_for_an_unknown_publish_id_changes_no_article(client, publishing):
    other = WechatArticle.objects.create(news=type(publishing.news).objects.create(title="t", content="c"),
                                         state=ArticleState.CHECKING, draft_media_id="MEDIA_2")
    before = [snapshot(publishing), snapshot(other)]

    for status in (0, 2, 5):
        response = callback(client, publish_event_xml("999999", status, "A1", "https://mp.weixin.qq.com/s/x"))
        assert response.status_code == 200

    assert [snapshot(publishing), snapshot(other)] == before


# ---------------------------------------------------------------- junk (finding 4)


def event_with(publish_id, *, status="0", fail_idx="") -> bytes:
    return (f"<xml><MsgType>event</MsgType><Event>PUBLISHJOBFINISH</Event><PublishEventInfo>"
            f"<publish_id>{publish_id}</publish_id><publish_status>{status}</publish_status>"
            f"{fail_idx}</PublishEventInfo></xml>").encode()


@pytest.mark.parametrize("name, body, status, message", [
    ("fail_idx superscript", lambda p: event_with(p, status="3", fail_idx="<fail_idx>\u00b2</fail_idx>"),
     400, "fail_idx"),
    ("fail_idx 5000 digits", lambda p: event_with(p, status="3", fail_idx=f"<fail_idx>{'9' * 5000}</fail_idx>"),
     400, "fail_idx"),
    ("publish_status 99999", lambda p: event_with(p, status="99999"), 400, "publish_status"),
    ("publish_status -1", lambda p: event_with(p, status="-1"), 400, "publish_status"),
    ("publish_status missing", lambda p: event_with(p, status=""), 400, "publish_status"),
    ("publish_id spaces", lambda p: event_with("1 OR 1"), 400, "publish_id"),
    ("publish_id 5000 chars", lambda p: event_with("9" * 5000), 400, "publish_id"),
    ("nested 100,000 deep", lambda p: b"<a>" * 100_000 + b"</a>" * 100_000, 413, "WECHAT_CALLBACK_MAX_BYTES"),
    ("nested 5,000 deep, small", lambda p: b"<a>" * 5_000 + b"</a>" * 5_000, 400, "nested deeper"),
    ("DOCTYPE in UTF-16", lambda p: ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
                                     '<xml>&a;</xml>').encode("utf-16"), 400, "DTD"),
    ("DOCTYPE in UTF-8", lambda p: b'<!DOCTYPE x [<!ENTITY a "aaaa">]><xml>&a;</xml>', 400, "DTD"),
    ("external entity", lambda p: b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><xml/>', 400, "DTD"),
    ("not XML", lambda p: b"{\"json\": true}", 400, "not well-formed"),
    ("unknown encoding", lambda p: b'<?xml version="1.0" encoding="x-nope"?><xml/>', 400, "not well-formed"),
    ("empty", lambda p: b"", 400, "not well-formed"),
])
def test_junk_bodies_get_a_4xx_naming_the_problem(client, publishing, name, body, status, message):
    before = snapshot(publishing)

    response = callback(client, body(publishing.publish_id))

    assert response.status_code == status, response.content[:300]
    assert message.encode() in response.content
    assert snapshot(publishing) == before


@pytest.mark.parametrize("query", [
    "signature=%C3%A9&timestamp=1&nonce=2",
    "signature=&timestamp=&nonce=",
    "",
    "signature=" + "a" * 40 + "&timestamp=" + "9" * 5000 + "&nonce=2",
    "signature=" + "a" * 40 + "&timestamp=1&nonce=%00",
])
def test_a_malformed_signature_query_is_a_403(client, publishing, query):
    response = post(client, query, publish_event_xml(publishing.publish_id, 0))
    assert response.status_code == 403 and b"signature" in response.content


def test_a_non_ascii_echostr_is_refused_on_the_server_check(client, fake_wechat):
    assert callback(client, method="get", echostr="%C3%A9").status_code == 400
    assert callback(client, method="get", echostr="123abc").content == b"123abc"


# ---------------------------------------------------------------- fuzzing


def fuzz_event():
    from hypothesis import strategies as st

    # Mostly the values that matter (the known publish_id, status 0, the edge cases), some noise.
    edge = st.sampled_from(["0", "0", "3", "7", "99999", "-1", "\u00b2", "9" * 5000, " 3 ", "", "<", "]]>", "&amp;"])
    text = st.one_of(edge, edge, st.text(max_size=40))
    url = st.one_of(st.sampled_from(["https://mp.weixin.qq.com/s/ok", "javascript:alert(1)", "https://evil.example/",
                                     "https://mp.weixin.qq.com\\@evil.example/", "http://mp.weixin.qq.com/"]), text)

    def xml_escape(value: str) -> str:
        return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def build(publish_id, status, article_id, urls, fails, raw_tail):
        items = "".join(f"<item><idx>1</idx><article_url>{xml_escape(u)}</article_url></item>" for u in urls)
        fail = "".join(f"<fail_idx>{xml_escape(f)}</fail_idx>" for f in fails)
        return (f"<xml><MsgType>event</MsgType><Event>PUBLISHJOBFINISH</Event><PublishEventInfo>"
                f"<publish_id>{xml_escape(publish_id)}</publish_id><publish_status>{xml_escape(status)}"
                f"</publish_status><article_id>{xml_escape(article_id)}</article_id><article_detail>{items}"
                f"</article_detail>{fail}</PublishEventInfo></xml>").encode("utf-8", "surrogatepass") + raw_tail

    return st.one_of(
        st.builds(build, st.one_of(st.just("2247483647"), st.just("2247483647"), text), text, text,
                  st.lists(url, max_size=3),
                  st.lists(text, max_size=3), st.one_of(st.just(b""), st.binary(max_size=20))),
        st.binary(max_size=300),
    )


def test_any_signed_body_gets_a_2xx_or_4xx_and_a_refused_one_changes_nothing(client, publishing):
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings

    @hsettings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=fuzz_event())
    def check(body):
        WechatArticle.objects.filter(pk=publishing.pk).update(state=ArticleState.PUBLISHING, article_url="",
                                                              publish_status=None, last_error="")
        before = snapshot(publishing)
        response = callback(client, body)
        assert response.status_code in (200, 400, 413), (response.status_code, response.content[:200])
        if response.status_code != 200:
            assert snapshot(publishing) == before
        else:
            url = WechatArticle.objects.get(pk=publishing.pk).article_url
            assert url == "" or url.startswith("https://mp.weixin.qq.com/")

    check()
