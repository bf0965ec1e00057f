"""Downloading an item's content images for WeChat, over real HTTP (the fake serves them):
what is fetched, and the addresses, hosts, redirects, sizes and types that are refused."""

import pytest

from tests.wechat_fixtures import fake_wechat  # noqa: F401  (fixture)
from wechat.client import WechatPermanentError
from wechat.images import content_image_sources, fetch_image, rewrite_content_images
from tests.conftest import slack

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


# ---------------------------------------------------------------- hostile servers and URLs


class RawServer:
    """A real TCP server on a loopback address answering each connection with `script`:
    a list of (bytes to send, seconds to wait after). Records the requests it received."""

    def __init__(self, script, host="127.0.0.1"):
        import socket
        import threading

        self.script, self.requests, self.stopping = script, [], threading.Event()
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import socket

        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self.requests.append(conn.recv(65536))
                    for data, pause in self.script:
                        if self.stopping.is_set():
                            break
                        conn.sendall(data)
                        self.stopping.wait(pause)
                except OSError:
                    pass  # the client gave up: what the deadline tests expect

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(script, host="127.0.0.1"):
        servers.append(RawServer(script, host))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def drip(data: bytes, every: float):
    return [(data[i:i + 1], every) for i in range(len(data))]


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"


@pytest.mark.parametrize("script", [
    pytest.param(lambda: [(HEADERS + b"Content-Length: 100000\r\n\r\n" + PNG, 0)] + drip(b"\x00" * 400, 0.05),
                 id="body with a length"),
    pytest.param(lambda: [(HEADERS + b"Connection: close\r\n\r\n" + PNG, 0)] + drip(b"\x00" * 400, 0.05),
                 id="body until close"),
    pytest.param(lambda: drip(HEADERS + b"X-Slow: " + b"a" * 400 + b"\r\n\r\n", 0.05), id="headers"),
])
def test_a_server_dripping_bytes_fails_by_the_overall_deadline(raw_server, settings, script):
    import time

    from wechat.client import WechatTransientError

    settings.WECHAT_IMAGE_ALLOW_PRIVATE = True
    settings.WECHAT_READ_TIMEOUT = 30  # each byte comes well within it
    settings.WECHAT_IMAGE_DEADLINE = 2
    server = raw_server(script())  # 400 bytes at 20 a second: 20 s if waited on

    started = time.monotonic()
    with pytest.raises(WechatTransientError, match=r"not downloaded within 2 s \(WECHAT_IMAGE_DEADLINE\)"):
        fetch_image(f"{server.url}/img/slow.png")
    assert time.monotonic() - started < slack(6)  # 2 s, plus a loaded machine's margin


def test_a_content_length_that_is_not_a_number_is_a_permanent_error(raw_server, settings):
    settings.WECHAT_IMAGE_ALLOW_PRIVATE = True
    server = raw_server([(HEADERS + b"Content-Length: abc\r\nConnection: close\r\n\r\n" + PNG, 0)])

    with pytest.raises(WechatPermanentError, match="Content-Length 'abc' is not a number"):
        fetch_image(f"{server.url}/img/photo.png")


@pytest.mark.parametrize("template, message", [
    (r"http://127.0.0.2:{port}\@img.example.com/png", "backslash"),
    ("http://127.0.0.2:{port}@img.example.com/png", "user info"),
    ("http://img.example.com@127.0.0.2:{port}/png", "user info"),
    ("http://127.0.0.2:{port} img.example.com/png", "whitespace"),
    ("http://127.0.0.2:{port}\timg.example.com/png", "whitespace"),
    ("http://127.0.0.2:{port}/png\n", "whitespace"),
])
def test_a_url_the_parsers_read_differently_is_refused_before_connecting(raw_server, settings, template, message):
    settings.WECHAT_IMAGE_ALLOW_PRIVATE = True  # only the URL check stands in the way
    settings.WECHAT_IMAGE_HOSTS = ["img.example.com"]
    server = raw_server([(HEADERS + f"Content-Length: {len(PNG)}\r\n\r\n".encode() + PNG, 0)], host="127.0.0.2")

    with pytest.raises(WechatPermanentError, match=message):
        fetch_image(template.format(port=server.port))
    assert server.requests == []


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("169.254.169.254", False), ("::1", False), ("fe80::1", False),
    ("fc00::1", False), ("224.0.0.1", False), ("ff02::1", False),
    ("64:ff9b::7f00:1", False), ("64:ff9b::808:808", False), ("64:ff9b:1::1", False),  # NAT64
    ("2002:7f00:1::", False), ("2002:808:808::1", False),  # 6to4
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ("::ffff:127.0.0.1", False), ("::ffff:8.8.8.8", False),  # IPv4-mapped
    ("::127.0.0.1", False), ("::8.8.8.8", False),  # IPv4-compatible
])
def test_ipv6_transition_addresses_count_as_private(address, public):
    import ipaddress

    from wechat.images import is_public_address

    assert is_public_address(ipaddress.ip_address(address)) is public
