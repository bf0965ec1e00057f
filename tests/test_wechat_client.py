"""The WeChat adapter over real HTTP to the local fake: token sharing and refresh, error
types, what is known about a request that got no answer, and secrets kept out of errors."""

import logging
import socket

import pytest

from nextevent.redis import get_redis
from tests.wechat_fixtures import APP_ID, APP_SECRET, DEFAULT_THUMB, fake_wechat  # noqa: F401  (fixture)
from wechat.client import (
    WechatClient,
    WechatConfigError,
    WechatOutcomeUnknown,
    WechatPermanentError,
    WechatQuotaExhausted,
    WechatRateLimited,
    WechatTransientError,
)

ARTICLE = {"title": "发布会", "author": "编辑部", "content": "<p>正文</p>", "thumb_media_id": DEFAULT_THUMB}


def client(fake, **kwargs) -> WechatClient:
    return WechatClient(app_id=APP_ID, app_secret=APP_SECRET, base_url=fake.base_url, **kwargs)


def test_it_shares_one_token_between_clients_through_redis(fake_wechat):
    client(fake_wechat).add_draft([ARTICLE])
    client(fake_wechat).add_draft([ARTICLE])

    assert fake_wechat.count("stable_token") == 1
    ttl = get_redis().ttl(f"wechat:access_token:{APP_ID}")
    assert 7200 - 300 - 5 <= ttl <= 7200 - 300  # refreshed 5 minutes before WeChat expires it


def test_it_fetches_a_new_token_once_when_wechat_refuses_the_cached_one(fake_wechat):
    c = client(fake_wechat)
    c.add_draft([ARTICLE])
    fake_wechat.revoke_token()

    c.add_draft([ARTICLE])

    assert fake_wechat.count("stable_token") == 2
    assert fake_wechat.count("draft/add") == 3
    assert len(fake_wechat.drafts) == 2


def test_it_replaces_a_token_that_expired_mid_flow(fake_wechat):
    c = client(fake_wechat)
    c.add_draft([ARTICLE])
    fake_wechat.expire_token()  # WeChat's clock says it is over; our cache still holds it

    c.add_draft([ARTICLE])

    assert [call["result"].get("errcode") for call in fake_wechat.calls_to("draft/add")] == [None, 42001, None]
    assert fake_wechat.count("stable_token") == 2 and len(fake_wechat.drafts) == 2


def test_it_gives_up_when_the_fresh_token_is_refused_too(fake_wechat):
    fake_wechat.script("draft/add", 40001, 40001)

    with pytest.raises(WechatTransientError, match="refused twice"):
        client(fake_wechat).add_draft([ARTICLE])
    assert fake_wechat.count("draft/add") == 2


def test_it_evicts_only_the_token_that_failed(fake_wechat):
    c = client(fake_wechat)
    get_redis().set(f"wechat:access_token:{APP_ID}", "newer-token-from-another-process")

    c._evict_token("the-token-that-failed")

    assert get_redis().get(f"wechat:access_token:{APP_ID}") == b"newer-token-from-another-process"


def test_it_sends_chinese_text_as_utf8_without_escapes(fake_wechat):
    client(fake_wechat).add_draft([ARTICLE])

    body = fake_wechat.calls_to("draft/add")[0]["body"]
    assert "发布会".encode() in body and b"\\u" not in body


@pytest.mark.parametrize("errcode, kind", [
    (-1, WechatTransientError),
    (45011, WechatRateLimited),
    (53501, WechatRateLimited),
    (45009, WechatQuotaExhausted),
    (45003, WechatPermanentError),
    (40164, WechatConfigError),
    (48001, WechatConfigError),
    (99999, WechatPermanentError),
])
def test_it_turns_each_errcode_into_what_the_caller_must_do(fake_wechat, errcode, kind):
    fake_wechat.script("draft/add", errcode)

    with pytest.raises(kind) as caught:
        client(fake_wechat).add_draft([ARTICLE])
    assert caught.type is kind and caught.value.errcode == errcode and caught.value.api == "draft/add"


def test_it_reports_wrong_credentials_as_configuration(fake_wechat):
    with pytest.raises(WechatConfigError, match="40125"):
        WechatClient(app_id=APP_ID, app_secret="wrong", base_url=fake_wechat.base_url).add_draft([ARTICLE])


def test_it_refuses_to_start_without_credentials():
    with pytest.raises(WechatConfigError, match="WECHAT_APP_ID and WECHAT_APP_SECRET"):
        WechatClient(app_id="", app_secret="", base_url="http://127.0.0.1:9/")


def test_it_takes_the_host_root_as_base_url_and_adds_cgi_bin(fake_wechat, settings):
    assert WechatClient.from_settings().base_url == f"{fake_wechat.base_url}/cgi-bin/"
    with pytest.raises(WechatConfigError, match="WECHAT_API_BASE_URL is the host root"):
        WechatClient(app_id=APP_ID, app_secret=APP_SECRET, base_url="https://api.weixin.qq.com/cgi-bin/")


def test_it_pages_through_the_draft_box_newest_first(fake_wechat):
    c = client(fake_wechat)
    ids = [c.add_draft([{**ARTICLE, "title": f"第{n}篇"}]) for n in range(3)]

    page = c.list_drafts(offset=0, count=2)
    rest = c.list_drafts(offset=2, count=2, no_content=True)

    assert page["total_count"] == 3 and [i["media_id"] for i in page["item"]] == ids[:0:-1]
    assert page["item"][0]["content"]["news_item"][0]["title"] == "第2篇"
    assert [i["media_id"] for i in rest["item"]] == ids[:1]
    assert "content" not in rest["item"][0]["content"]["news_item"][0]
    assert c.count_drafts() == 3 and fake_wechat.calls_to("draft/count")[0]["body"] == b""
    assert c.get_draft(ids[0])[0]["title"] == "第0篇"


def test_a_submit_whose_answer_was_lost_is_outcome_unknown(fake_wechat):
    fake_wechat.script("freepublish/submit", "drop")
    c = client(fake_wechat)
    draft = c.add_draft([ARTICLE])

    with pytest.raises(WechatOutcomeUnknown):
        c.submit_publish(draft)
    assert len(fake_wechat.publishes) == 1  # WeChat did accept it: why it must not be sent again


def test_a_server_error_is_outcome_unknown(fake_wechat):
    fake_wechat.script("freepublish/submit", ("http", 502))

    with pytest.raises(WechatOutcomeUnknown, match="HTTP 502"):
        client(fake_wechat).submit_publish("DRAFT_1")


def test_a_refused_connection_is_transient_and_known_not_sent():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    get_redis().set(f"wechat:access_token:{APP_ID}", "cached-token")
    c = WechatClient(app_id=APP_ID, app_secret=APP_SECRET, base_url=f"http://127.0.0.1:{port}")

    with pytest.raises(WechatTransientError) as caught:
        c.submit_publish("DRAFT_1")
    assert not isinstance(caught.value, WechatOutcomeUnknown)
    # requests quotes the URL, token included, in this error; it ends up in the job's last_error.
    assert "access_token=***" in str(caught.value) and "cached-token" not in str(caught.value)


def test_it_keeps_the_token_and_secret_out_of_errors_and_logs(fake_wechat, caplog):
    caplog.set_level(logging.DEBUG)
    c = client(fake_wechat, timeout=(2, 0.3))
    token = c.access_token()
    c.add_draft([ARTICLE])  # urllib3 logs each answered request's URL at DEBUG
    fake_wechat.script("freepublish/submit", ("delay", 1))

    with pytest.raises(WechatOutcomeUnknown) as caught:
        c.submit_publish("DRAFT_1")

    assert "ReadTimeout" in str(caught.value) and token not in str(caught.value)
    assert token not in caplog.text and APP_SECRET not in caplog.text
    assert APP_SECRET not in repr(c)
