"""The fake WeChat (devtools/wechat_fake.py) for tests: a pytest fixture running it on 127.0.0.1 with
this process's settings pointed at it, the same settings for qcluster subprocesses, and the
callback URL called as WeChat calls it. Test modules import what they use from here."""

from __future__ import annotations

import itertools
import time

import pytest

from devtools.wechat_fake import APP_ID, APP_SECRET, DEFAULT_THUMB, FakeWechat, publish_event_xml, signature  # noqa: F401

CALLBACK_TOKEN = "callback-token"
_nonces = itertools.count(1)


@pytest.fixture
def fake_wechat(settings):
    """A running fake, with this process's WeChat settings pointing at it. Content images
    come from the fake too, on 127.0.0.1: private addresses are allowed for downloads."""
    fake = FakeWechat().start()
    settings.WECHAT_APP_ID, settings.WECHAT_APP_SECRET = APP_ID, APP_SECRET
    settings.WECHAT_API_BASE_URL = fake.base_url
    settings.WECHAT_DEFAULT_THUMB_MEDIA_ID = ""
    settings.WECHAT_TOKEN = CALLBACK_TOKEN
    settings.WECHAT_IMAGE_ALLOW_PRIVATE = True
    yield fake
    fake.stop()


def wechat_env(fake: FakeWechat, **extra) -> dict[str, str]:
    """The same settings for qcluster subprocesses (fast timings: no minute-long waits)."""
    return {"WECHAT_APP_ID": APP_ID, "WECHAT_APP_SECRET": APP_SECRET, "WECHAT_API_BASE_URL": fake.base_url,
            "WECHAT_TOKEN": CALLBACK_TOKEN, "WECHAT_DEFAULT_THUMB_MEDIA_ID": "",
            "WECHAT_IMAGE_ALLOW_PRIVATE": "1", "WECHAT_POLL_FIRST": "0.5", "WECHAT_RECONCILE_DELAY": "1",
            **{k: str(v) for k, v in extra.items()}}


def callback(client, body: bytes = b"", *, token=CALLBACK_TOKEN, method="post", **query):
    """Call /wechat/callback with the Django test client, signed as WeChat signs: the current
    time and a fresh nonce unless given."""
    params = {"timestamp": str(int(time.time())), "nonce": f"n{next(_nonces)}x{time.monotonic_ns()}", **query}
    params["signature"] = signature(token, params["timestamp"], params["nonce"])
    url = "/wechat/callback?" + "&".join(f"{k}={v}" for k, v in params.items())
    if method == "get":
        return client.get(url)
    return client.post(url, body, content_type="text/xml")
