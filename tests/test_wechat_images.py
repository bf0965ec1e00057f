"""Downloading an item's content images for WeChat, over real HTTP (the fake serves them):
what is fetched, and the addresses, hosts, redirects, sizes and types that are refused."""

import pytest

from tests.wechat_fixtures import fake_wechat  # noqa: F401  (fixture)
from wechat.client import WechatPermanentError
from wechat.images import content_image_sources, fetch_image, rewrite_content_images

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


def test_it_downloads_a_png_or_jpeg_and_names_it_by_its_bytes(fake_wechat):
    fake_wechat.images["/img/photo.png"] = (JPEG, "image/png")  # the header lies; the bytes decide

    upload = fetch_image(f"{fake_wechat.root}/img/photo.png")

    assert upload.data == JPEG and upload.filename == "photo.jpg" and upload.content_type == "image/jpeg"


def test_it_refuses_a_private_address_unless_allowed(fake_wechat, settings):
    fake_wechat.images["/img/photo.png"] = (PNG, "image/png")
    settings.WECHAT_IMAGE_ALLOW_PRIVATE = False

    with pytest.raises(WechatPermanentError, match=r"127\.0\.0\.1, not a public address"):
        fetch_image(f"{fake_wechat.root}/img/photo.png")
    assert fake_wechat.calls == []  # nothing was sent on the connection


def test_it_refuses_a_name_that_resolves_to_loopback(fake_wechat, settings):
    settings.WECHAT_IMAGE_ALLOW_PRIVATE = False
    port = fake_wechat.server.server_address[1]

    with pytest.raises(WechatPermanentError, match=r"localhost is at (127\.0\.0\.1|::1), not a public address"):
        fetch_image(f"http://localhost:{port}/img/photo.png")


def test_it_only_fetches_from_the_allowed_hosts(fake_wechat, settings):
    fake_wechat.images["/img/photo.png"] = (PNG, "image/png")
    settings.WECHAT_IMAGE_HOSTS = ["images.example.com", ".cdn.example.com"]

    with pytest.raises(WechatPermanentError, match="host 127.0.0.1 is not in WECHAT_IMAGE_HOSTS"):
        fetch_image(f"{fake_wechat.root}/img/photo.png")
    settings.WECHAT_IMAGE_HOSTS = ["127.0.0.1"]
    assert fetch_image(f"{fake_wechat.root}/img/photo.png").data == PNG


def test_it_checks_every_redirect_hop_against_the_allowed_hosts(fake_wechat, settings):
    port = fake_wechat.server.server_address[1]
    fake_wechat.images["/img/photo.png"] = (PNG, "image/png")
    fake_wechat.redirects["/r/ok"] = "/img/photo.png"
    fake_wechat.redirects["/r/away"] = f"http://localhost:{port}/img/photo.png"
    settings.WECHAT_IMAGE_HOSTS = ["127.0.0.1"]

    assert fetch_image(f"{fake_wechat.root}/r/ok").data == PNG
    with pytest.raises(WechatPermanentError, match="host localhost is not in WECHAT_IMAGE_HOSTS"):
        fetch_image(f"{fake_wechat.root}/r/away")


def test_it_stops_following_a_redirect_loop(fake_wechat):
    fake_wechat.redirects["/r/loop"] = "/r/loop"

    with pytest.raises(WechatPermanentError, match="more than 3 redirects"):
        fetch_image(f"{fake_wechat.root}/r/loop")


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "only absolute http(s) URLs"),
    ("/relative/photo.png", "only absolute http(s) URLs"),
    ("gopher://example.com/x", "only absolute http(s) URLs"),
])
def test_it_only_fetches_http_urls(url, message, settings):
    with pytest.raises(WechatPermanentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fetch_image(url)


def test_it_refuses_an_image_over_the_size_limit(fake_wechat, settings):
    settings.WECHAT_IMAGE_MAX_BYTES = 2048
    fake_wechat.images["/img/big.png"] = (PNG + b"\x00" * 4096, "image/png")

    with pytest.raises(WechatPermanentError, match="larger than 2048 bytes"):
        fetch_image(f"{fake_wechat.root}/img/big.png")


def test_it_refuses_what_is_not_a_jpeg_or_png(fake_wechat):
    fake_wechat.images["/img/anim.gif"] = (b"GIF89a" + b"\x00" * 32, "image/gif")

    with pytest.raises(WechatPermanentError, match="not a JPEG or PNG"):
        fetch_image(f"{fake_wechat.root}/img/anim.gif")


def test_it_finds_outside_images_once_and_rewrites_every_occurrence():
    content = ('<img src="https://a.example/x.png?w=1&amp;h=2"><img src=\'https://a.example/x.png?w=1&amp;h=2\'>'
               '<img class="c" src="http://mmbiz.qpic.cn/already/0">')

    sources = content_image_sources(content)

    assert sources == [("https://a.example/x.png?w=1&amp;h=2", "https://a.example/x.png?w=1&h=2")]
    out = rewrite_content_images(content, {sources[0][0]: "http://mmbiz.qpic.cn/new/0"})
    assert out.count("http://mmbiz.qpic.cn/new/0") == 2 and "a.example" not in out
