"""Images in a news item's content: found, downloaded (with care: the URLs come from editors,
and the worker sits inside our network) and pointed at WeChat's copies.

A download goes only over http(s), to hosts in WECHAT_IMAGE_HOSTS (empty: any), follows at
most a few redirects (each hop checked again), stops at WECHAT_IMAGE_MAX_BYTES, and never
talks to a private, loopback, link-local or otherwise non-global address unless
WECHAT_IMAGE_ALLOW_PRIVATE is on. The address is checked on the connected socket, after DNS,
so a name that resolves (or re-resolves) to an inside address is refused too; nothing has
been sent on that connection yet. Environment proxies are not used for these downloads
(through a proxy the socket's peer would be the proxy, and the check would mean nothing).
"""

from __future__ import annotations

import html
import ipaddress
import posixpath
import re
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from wechat.client import Upload, WechatPermanentError, WechatTransientError

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


def _check_peer(sock, host: str) -> None:
    if settings.WECHAT_IMAGE_ALLOW_PRIVATE:
        return
    address = ipaddress.ip_address(sock.getpeername()[0].split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WechatPermanentError(f"content image {url[:200]!r}: only absolute http(s) URLs can be uploaded")
    allowed = settings.WECHAT_IMAGE_HOSTS
    host = parts.hostname.lower()
    if allowed and not any(host == h.lower() or (h.startswith(".") and host.endswith(h.lower())) for h in allowed):
        raise WechatPermanentError(f"content image {url[:200]}: host {host} is not in WECHAT_IMAGE_HOSTS")


def fetch_image(url: str) -> Upload:
    """Download one content image for media/uploadimg (JPEG or PNG, under the size limit)."""
    limit = settings.WECHAT_IMAGE_MAX_BYTES
    timeout = (settings.WECHAT_CONNECT_TIMEOUT, settings.WECHAT_READ_TIMEOUT)
    first = url
    with _session() as session:
        for _ in range(MAX_REDIRECTS + 1):
            _check_url(url)
            try:
                with session.get(url, stream=True, allow_redirects=False, timeout=timeout) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if 400 <= response.status_code < 500:
                        raise WechatPermanentError(f"content image {url}: HTTP {response.status_code}")
                    response.raise_for_status()
                    if int(response.headers.get("Content-Length") or 0) > limit:
                        raise _too_large(url, limit)
                    data = bytearray()
                    for chunk in response.iter_content(64 * 1024):
                        data += chunk
                        if len(data) > limit:
                            raise _too_large(url, limit)
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
