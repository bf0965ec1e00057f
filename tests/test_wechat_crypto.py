"""The callback's compatible and safe modes: WeChat's published sample
vector decrypts, the fake's independently written encryption round-trips through the real
callback URL in every mode, and what cannot be verified or decrypted is refused with a log
line, never acknowledged."""

from __future__ import annotations

import re
import time
from urllib.parse import urlencode

import pytest
from django.forms.models import model_to_dict

from tests.wechat_fixtures import APP_ID, CALLBACK_TOKEN, fake_wechat, publish_event_xml, signature  # noqa: F401
from devtools.wechat_fake import aes_encrypt, msg_signature
from wechat.crypto import CryptoError, WechatCrypto
from wechat.models import ArticleState, WechatArticle

pytestmark = pytest.mark.django_db

# WeChat's own sample for message encryption: the demo of the official WXBizMsgCrypt Python
# sample ("Sample.py", by jonyqin, 2014) that the Official Account documentation's
# "message encryption" page links for download; copied e.g. in
# github.com/charlesXu86/Chatbot_CN Chatbot_Web/impl/weixin/Sample.py and in wechatpy's
# docs. EncodingAESKey, token, app id, timestamp, nonce, msg_signature and ciphertext as published.
SAMPLE = {
    "encoding_aes_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
    "token": "spamtest",
    "app_id": "wx2c2769f8efd9abc2",
    "timestamp": "1409735669",
    "nonce": "1320562132",
    "msg_signature": "5d197aaffba7e9b25a30732f161a50dee96bd5fa",
    "encrypt": "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHF"
               "VAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVti"
               "cbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe"
               "+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEP"
               "o5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=",
}
KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"  # any 43 characters; this one from wechatpy's tests


def sample_crypto(**overrides) -> WechatCrypto:
    return WechatCrypto(**{"token": SAMPLE["token"], "encoding_aes_key": SAMPLE["encoding_aes_key"],
                           "app_id": SAMPLE["app_id"], **overrides})


def test_wechats_published_sample_verifies_and_decrypts():
    crypto = sample_crypto()
    crypto.check_signature(SAMPLE["msg_signature"], SAMPLE["timestamp"], SAMPLE["nonce"], SAMPLE["encrypt"])

    message = crypto.decrypt(SAMPLE["encrypt"])

    assert message.startswith(b"<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>")
    assert b"<Content><![CDATA[abcdteT]]></Content>" in message and message.endswith(b"</xml>")


@pytest.mark.parametrize("change, error", [
    (lambda s: {**s, "nonce": "1320562133"}, "bad msg_signature"),
    (lambda s: {**s, "encrypt": s["encrypt"][:-8] + "AAAAAAA="}, "bad msg_signature"),
])
def test_a_changed_sample_fails_the_msg_signature(change, error):
    s = change(SAMPLE)
    with pytest.raises(CryptoError, match=error):
        sample_crypto().check_signature(SAMPLE["msg_signature"], s["timestamp"], s["nonce"], s["encrypt"])


def test_the_sample_is_refused_for_another_app_id_or_key():
    with pytest.raises(CryptoError, match="another app id"):
        sample_crypto(app_id="wx-someone-else").decrypt(SAMPLE["encrypt"])
    with pytest.raises(CryptoError):
        sample_crypto(encoding_aes_key=KEY).decrypt(SAMPLE["encrypt"])


def test_our_encryption_and_the_fakes_round_trip_both_ways():
    ours = WechatCrypto(token="t", encoding_aes_key=KEY, app_id=APP_ID)
    message = "<xml><Content>中文 and more than one block of text</Content></xml>".encode()

    assert ours.decrypt(aes_encrypt(KEY, message, APP_ID)) == message
    assert ours.decrypt(ours.encrypt(message)) == message
    assert ours.encrypt(message, random16=b"0" * 16) == ours.encrypt(message, random16=b"0" * 16)


@pytest.mark.parametrize("junk", ["", "not base64!", "QUJD", "A" * 44])
def test_junk_ciphertext_is_a_crypto_error(junk):
    with pytest.raises(CryptoError):
        WechatCrypto(token="t", encoding_aes_key=KEY, app_id=APP_ID).decrypt(junk)


def test_a_bad_key_is_refused_without_showing_it():
    with pytest.raises(CryptoError) as caught:
        WechatCrypto(token="t", encoding_aes_key="short-secret", app_id=APP_ID)
    assert "short-secret" not in str(caught.value)
    assert KEY not in repr(WechatCrypto(token="t", encoding_aes_key=KEY, app_id=APP_ID))


# ---------------------------------------------------------------- the callback URL in each mode


@pytest.fixture
def publishing(fake_wechat, settings):
    from news.factories import NewsFactory

    settings.WECHAT_ENCODING_AES_KEY = KEY
    settings.WECHAT_CALLBACK_ALLOW_PLAINTEXT = True
    fake_wechat.callback_token, fake_wechat.encoding_aes_key = CALLBACK_TOKEN, KEY
    news = NewsFactory(push_to_wechat=True)
    return WechatArticle.objects.create(news=news, state=ArticleState.PUBLISHING, draft_media_id="MEDIA_1",
                                        publish_id="2247483647")


_n = iter(range(10**6))


def signed(fake, mode: str, plain: bytes, *, timestamp: str | None = None) -> tuple[str, bytes]:
    fake.callback_mode = mode
    query, body = fake.signed_message(plain, timestamp or str(int(time.time())), f"c{next(_n)}x{time.monotonic_ns()}")
    return urlencode(query), body


def post(client, query: str, body: bytes):
    return client.post(f"/wechat/callback?{query}", body, content_type="text/xml")


def event(article, status=0):
    return publish_event_xml(article.publish_id, status, "ART_1", "https://mp.weixin.qq.com/s/ok")


@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
def test_a_push_in_each_mode_settles_the_article_and_its_repeats_change_nothing(client, publishing, fake_wechat,
                                                                               mode, caplog):
    query, body = signed(fake_wechat, mode, event(publishing))

    answers = [post(client, query, body) for _ in range(3)]  # WeChat's retries: the same signed request

    assert [(a.status_code, a.content) for a in answers] == [(200, b"success")] * 3
    article = WechatArticle.objects.get(pk=publishing.pk)
    assert article.state == ArticleState.PUBLISHED and article.article_url == "https://mp.weixin.qq.com/s/ok"
    assert f"({mode} mode)" in caplog.text and caplog.text.count("repeated push") == 2


def test_in_compatible_mode_only_the_encrypted_copy_is_believed(client, publishing, fake_wechat):
    fake_wechat.callback_mode = "compatible"
    timestamp, nonce = str(int(time.time())), "compat1"
    query, body = fake_wechat.signed_message(event(publishing, 0), timestamp, nonce)
    # Someone changes the plaintext copy (not covered by any signature) to a failure.
    body = body.replace(b"<publish_status>0</publish_status>", b"<publish_status>3</publish_status>", 1)

    assert post(client, urlencode(query), body).content == b"success"
    assert WechatArticle.objects.get(pk=publishing.pk).state == ArticleState.PUBLISHED


def snapshot(article):
    return model_to_dict(WechatArticle.objects.get(pk=article.pk))


@pytest.mark.parametrize("name, tamper, status, message", [
    ("forged msg_signature", lambda q, b: (re.sub(r"msg_signature=[0-9a-f]{40}", "msg_signature=" + "0" * 40, q), b),
     403, "bad msg_signature"),
    ("ciphertext swapped", lambda q, b: (q, b.replace(b"<Encrypt><![CDATA[", b"<Encrypt><![CDATA[AAAA")), 403,
     "bad msg_signature"),
    ("no Encrypt element", lambda q, b: (q, b"<xml><ToUserName>x</ToUserName></xml>"), 400, "no Encrypt"),
])
def test_a_safe_mode_push_that_cannot_be_verified_is_refused_and_logged(client, publishing, fake_wechat, caplog, name,
                                                                        tamper, status, message):
    before = snapshot(publishing)
    query, body = tamper(*signed(fake_wechat, "safe", event(publishing)))

    response = post(client, query, body)

    assert response.status_code == status and message.encode() in response.content
    assert snapshot(publishing) == before and "wechat callback refused" in caplog.text


def test_a_message_for_another_app_is_refused(client, publishing, fake_wechat, settings):
    settings.WECHAT_APP_ID = "wx-another-app"
    query, body = signed(fake_wechat, "safe", event(publishing))

    response = post(client, query, body)

    assert response.status_code == 400 and b"another app id" in response.content
    assert WechatArticle.objects.get(pk=publishing.pk).state == ArticleState.PUBLISHING


def test_an_encrypted_push_without_the_key_configured_is_refused_naming_the_setting(client, publishing, fake_wechat,
                                                                                    settings, caplog):
    settings.WECHAT_ENCODING_AES_KEY = ""
    query, body = signed(fake_wechat, "safe", event(publishing))

    response = post(client, query, body)

    assert response.status_code == 400 and b"WECHAT_ENCODING_AES_KEY" in response.content
    assert "wechat callback refused (400)" in caplog.text
    assert WechatArticle.objects.get(pk=publishing.pk).state == ArticleState.PUBLISHING


def test_with_the_key_set_plaintext_is_refused_unless_allowed(client, publishing, fake_wechat, settings):
    settings.WECHAT_CALLBACK_ALLOW_PLAINTEXT = False
    query, body = signed(fake_wechat, "plaintext", event(publishing))

    response = post(client, query, body)

    assert response.status_code == 403 and b"WECHAT_CALLBACK_ALLOW_PLAINTEXT" in response.content


def test_a_stale_encrypted_push_is_refused(client, publishing, fake_wechat):
    query, body = signed(fake_wechat, "safe", event(publishing), timestamp=str(int(time.time()) - 3600))

    assert post(client, query, body).status_code == 403
    assert WechatArticle.objects.get(pk=publishing.pk).state == ArticleState.PUBLISHING


def test_the_same_signed_url_with_another_encrypted_body_is_a_replay(client, publishing, fake_wechat):
    query, body = signed(fake_wechat, "safe", publish_event_xml(publishing.publish_id, 1))
    assert post(client, query, body).content == b"success"

    response = post(client, query, body + b" ")

    assert response.status_code == 403 and b"nonce already used" in response.content


@pytest.mark.parametrize("mode", ["plaintext", "safe"])
def test_the_server_check_answers_in_each_mode(live_server, fake_wechat, settings, mode):
    settings.WECHAT_ENCODING_AES_KEY = KEY
    fake_wechat.callback_url, fake_wechat.callback_token = f"{live_server.url}/wechat/callback", CALLBACK_TOKEN
    fake_wechat.callback_mode, fake_wechat.encoding_aes_key = mode, KEY

    assert fake_wechat.verify_url("8265478263471") == (200, "8265478263471")


def test_an_encrypted_server_check_with_a_bad_signature_is_refused(client, fake_wechat, settings):
    settings.WECHAT_ENCODING_AES_KEY = KEY
    timestamp, nonce = str(int(time.time())), "echo1"
    echostr = aes_encrypt(KEY, b"hello", APP_ID)
    query = {"signature": signature(CALLBACK_TOKEN, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
             "encrypt_type": "aes", "echostr": echostr,
             "msg_signature": msg_signature(CALLBACK_TOKEN, timestamp, nonce, echostr + "x")}

    response = client.get("/wechat/callback?" + urlencode(query))

    assert response.status_code == 403 and b"hello" not in response.content
