"""Images in a news item's content: found, downloaded (with care: the URLs come from editors,
and the worker sits inside our network) and pointed at WeChat's copies.

A download goes only over http(s), to hosts in WECHAT_IMAGE_HOSTS (empty: any), follows at
most a few redirects (each hop checked again), stops at WECHAT_IMAGE_MAX_BYTES, and never
talks to a private, loopback, link-local or otherwise non-global address unless
WECHAT_IMAGE_ALLOW_PRIVATE is on. The address is checked on the connected socket, after DNS,
so a name that resolves (or re-resolves) to an inside address is refused too; nothing has
been sent on that connection yet. IPv6 transition addresses (IPv4-mapped and -compatible,
NAT64, 6to4, Teredo) count as private: each can reach an IPv4 address through a gateway.
Environment proxies are not used for these downloads (through a proxy the socket's peer
would be the proxy, and the check would mean nothing).

URLs are read strictly (wechat/strict_url.py): the host is the one urllib3 connects to, and
URLs that parsers read differently (backslashes, user info, whitespace) are refused.
A whole download, redirects included, has one deadline (WECHAT_IMAGE_DEADLINE): a server
that sends a byte at a time never resets it; when it passes, the connection is shut down.
"""

from __future__ import annotations

import html
import ipaddress
import posixpath
import re
import socket
import threading
import time
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from wechat.client import Upload, WechatPermanentError, WechatTransientError
from wechat.strict_url import UnsafeUrl, parse_strict

WECHAT_IMAGE_HOST = "mmbiz.qpic.cn"  # images already on WeChat stay as they are
MAX_REDIRECTS = 3
IMAGE_TYPES = {b"\xff\xd8\xff": ("jpg", "image/jpeg"), b"\x89PNG\r\n\x1a\n": ("png", "image/png")}
_IMG_SRC = re.compile(r"""(<img\b[^>]*?\ssrc\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)


def content_image_sources(content: str) -> list[tuple[str, str]]:
    """(src as written, URL) of each distinct image the content shows from outside WeChat."""
    out = []
    for src in dict.fromkeys(m.group(3) for m in _IMG_SRC.finditer(content)):
        url = html.unescape(src).strip()
        if urlsplit(url).hostname != WECHAT_IMAGE_HOST:
            out.append((src, url))
    return out


def rewrite_content_images(content: str, uploaded: dict[str, str]) -> str:
    return _IMG_SRC.sub(lambda m: m.group(1) + m.group(2) + uploaded.get(m.group(3), m.group(3)) + m.group(2),
                        content)


class BlockedAddress(Exception):
    """Not an OSError on purpose: urllib3 would take that for a network failure and retry."""


# Python's is_global calls these global; each embeds an IPv4 address a gateway may deliver to.
TRANSITION_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "::ffff:0:0/96",   # IPv4-mapped
    "::/96",           # IPv4-compatible (deprecated)
    "64:ff9b::/96",    # NAT64, well-known prefix
    "64:ff9b:1::/48",  # NAT64, local use
    "2002::/16",       # 6to4
    "2001::/32",       # Teredo
))


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.version == 6 and any(address in net for net in TRANSITION_NETWORKS):
        return False
    return address.is_global and not address.is_multicast


class _Download:
    """The sockets one download opened, shut down by its deadline timer (another thread)."""

    def __init__(self):
        self.sockets: list[socket.socket] = []
        self.expired = False


_current = threading.local()  # .download: the _Download of this thread's fetch_image, if any


def _check_peer(sock, host: str) -> None:
    download = getattr(_current, "download", None)
    if download is not None:
        download.sockets.append(sock)
    if settings.WECHAT_IMAGE_ALLOW_PRIVATE:
        return
    address = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
    if not is_public_address(address):
        sock.close()
        raise BlockedAddress(f"{host} is at {address}, not a public address (WECHAT_IMAGE_ALLOW_PRIVATE is off)")


class _CheckedHTTPConnection(HTTPConnection):
    def _new_conn(self):
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _CheckedHTTPSConnection(HTTPSConnection):
    def _new_conn(self):
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _PublicOnlyAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no environment proxies: see the module docstring
    adapter = _PublicOnlyAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _check_url(url: str) -> None:
    try:
        host = parse_strict(url).host
    except UnsafeUrl as exc:
        raise WechatPermanentError(f"content image {url[:200]!r}: {exc}") from None
    allowed = settings.WECHAT_IMAGE_HOSTS
    if allowed and not any(host == h.lower() or (h.startswith(".") and host.endswith(h.lower())) for h in allowed):
        raise WechatPermanentError(f"content image {url[:200]}: host {host} is not in WECHAT_IMAGE_HOSTS")


def fetch_image(url: str) -> Upload:
    """Download one content image for media/uploadimg (JPEG or PNG, under the size limit),
    within WECHAT_IMAGE_DEADLINE seconds in all."""
    seconds = settings.WECHAT_IMAGE_DEADLINE
    deadline = time.monotonic() + seconds
    download = _current.download = _Download()
    # A blocked read cannot see the clock: at the deadline the timer shuts the sockets down,
    # which wakes it (with an error, or an early end of data that `expired` marks as such).
    timer = threading.Timer(seconds, _expire, args=(download,))
    timer.daemon = True
    timer.start()
    try:
        return _fetch(url, deadline, download)
    except (WechatPermanentError, WechatTransientError):
        if download.expired or time.monotonic() >= deadline:
            raise _too_slow(url, seconds) from None
        raise
    finally:
        timer.cancel()
        _current.download = None


def _expire(download: _Download) -> None:
    download.expired = True
    for sock in list(download.sockets):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _too_slow(url: str, seconds: float) -> WechatTransientError:
    return WechatTransientError(f"content image {url[:200]}: not downloaded within {seconds:g} s "
                                f"(WECHAT_IMAGE_DEADLINE)")


def _content_length(url: str, response) -> int:
    raw = (response.headers.get("Content-Length") or "").strip()
    if not raw:
        return 0
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        # A broken server stays broken: retrying would only repeat the download.
        raise WechatPermanentError(f"content image {url[:200]}: Content-Length {raw[:40]!r} is not a number")
    return int(raw)


def _fetch(url: str, deadline: float, download: _Download) -> Upload:
    limit = settings.WECHAT_IMAGE_MAX_BYTES
    first = url
    with _session() as session:
        for _ in range(MAX_REDIRECTS + 1):
            _check_url(url)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WechatTransientError(f"content image {url[:200]}: deadline passed")
            timeout = (min(settings.WECHAT_CONNECT_TIMEOUT, remaining), min(settings.WECHAT_READ_TIMEOUT, remaining))
            try:
                with session.get(url, stream=True, allow_redirects=False, timeout=timeout) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if 400 <= response.status_code < 500:
                        raise WechatPermanentError(f"content image {url}: HTTP {response.status_code}")
                    response.raise_for_status()
                    if _content_length(url, response) > limit:
                        raise _too_large(url, limit)
                    data = bytearray()
                    for chunk in response.iter_content(64 * 1024):
                        data += chunk
                        if len(data) > limit:
                            raise _too_large(url, limit)
                        if time.monotonic() >= deadline:
                            raise WechatTransientError(f"content image {url[:200]}: deadline passed")
                    if download.expired:  # the timer ended a body that had no length
                        raise WechatTransientError(f"content image {url[:200]}: deadline passed")
                    break
            except BlockedAddress as exc:
                raise WechatPermanentError(f"content image {url}: {exc}") from None
            except requests.RequestException as exc:
                raise WechatTransientError(f"content image {url}: {type(exc).__name__}: {exc}") from None
        else:
            raise WechatPermanentError(f"content image {first}: more than {MAX_REDIRECTS} redirects")
    kind = next((k for magic, k in IMAGE_TYPES.items() if data.startswith(magic)), None)
    if kind is None:
        raise WechatPermanentError(f"content image {url}: not a JPEG or PNG, the types WeChat takes in content")
    name = posixpath.basename(urlsplit(url).path).rsplit(".", 1)[0] or "image"
    return Upload(f"{name[:50]}.{kind[0]}", bytes(data), kind[1])


def _too_large(url: str, limit: int) -> WechatPermanentError:
    return WechatPermanentError(f"content image {url}: larger than {limit} bytes (WECHAT_IMAGE_MAX_BYTES)")
