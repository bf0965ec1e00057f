"""What a request to the WeChat callback URL must pass before anything in it is believed.

In plaintext mode WeChat signs only (token, timestamp, nonce), never the body, so a signed
URL seen once (an access log, a proxy) could be replayed with any body. Hence:
- the signature is 40 lower-case hex characters, compared in constant time;
- the timestamp is within WECHAT_CALLBACK_WINDOW seconds of our clock;
- each (timestamp, nonce) is accepted once: remembered in Redis (SET NX EX) for as long
  as the timestamp stays acceptable;
- the body is at most WECHAT_CALLBACK_MAX_BYTES, parsed by defusedxml (no DTD, no
  entities, whatever the encoding), at most MAX_DEPTH elements deep;
- a PUBLISHJOBFINISH's fields are checked for what WeChat documents: publish_id and
  article_id short tokens, publish_status 0-6, fail_idx small integers, article_url https
  on WeChat's own hosts (WECHAT_ARTICLE_HOSTS).
Every refusal is a CallbackRefused with a 4xx status and a message naming the field.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

import redis
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse
from django.conf import settings

from nextevent.redis import get_redis
from wechat.strict_url import UnsafeUrl, parse_strict

MAX_DEPTH = 16  # a PUBLISHJOBFINISH is 5 deep; anything far deeper is not from WeChat
MAX_ITEMS = 64  # article_detail items and fail_idx entries (a draft holds at most 8 articles)
PUBLISH_STATUSES = range(0, 7)  # documented: 0 success .. 6 banned after success
NONCE_KEY = "wechat:callback:seen:{timestamp}:{nonce}"

_SIGNATURE = re.compile(r"[0-9a-f]{40}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_TOKEN = re.compile(r"[0-9A-Za-z_.=-]{1,128}")
_SMALL_INT = re.compile(r"[0-9]{1,3}")


class CallbackRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class PublishEvent:
    publish_id: str
    status: int
    article_id: str = ""
    urls: list[str] = field(default_factory=list)
    fail_idx: list[int] = field(default_factory=list)


def callback_signature(token: str, timestamp: str, nonce: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


def verify_query(query, token: str, *, now: float | None = None) -> tuple[str, str]:
    """Signature, then the timestamp window. Returns (timestamp, nonce)."""
    signature, timestamp, nonce = (query.get(k, "") for k in ("signature", "timestamp", "nonce"))
    # Format first: compare_digest refuses non-ASCII str with a TypeError (a 500 before).
    if not (_SIGNATURE.fullmatch(signature) and _TIMESTAMP.fullmatch(timestamp) and _NONCE.fullmatch(nonce)):
        raise CallbackRefused(403, "bad signature: signature (40 hex digits), timestamp (digits) and nonce "
                                   "are required")
    if not hmac.compare_digest(callback_signature(token, timestamp, nonce).encode(), signature.encode()):
        raise CallbackRefused(403, "bad signature")
    window = settings.WECHAT_CALLBACK_WINDOW
    skew = int(timestamp) - int(now if now is not None else time.time())
    if abs(skew) > window:
        raise CallbackRefused(403, f"timestamp {timestamp} is {abs(skew)} s from now, outside the accepted "
                                   f"window (WECHAT_CALLBACK_WINDOW={window} s)")
    return timestamp, nonce


@contextlib.contextmanager
def nonce_once(timestamp: str, nonce: str, body: bytes = b""):
    """Accept this (timestamp, nonce) once. Yields True the first time; False when the same
    signed URL comes again with the same body and that one was handled (WeChat retries a
    push it got no answer for within 5 s: the repeat is answered "success" and changes
    nothing). The same URL with another body is a replay: 403. While the first copy is still
    being handled, a repeat gets 503 (WeChat tries again). If the with-block fails for a
    reason of ours (the database is down), the nonce is released so that WeChat's retry of
    the same push works; a refused body keeps it used, so the URL cannot be tried again
    with another body."""
    key = NONCE_KEY.format(timestamp=timestamp, nonce=nonce)
    digest = hashlib.sha256(body).hexdigest()
    # Remember it for as long as the timestamp could still pass the window, plus clock slack.
    ttl = 2 * settings.WECHAT_CALLBACK_WINDOW + 60
    try:
        fresh = get_redis().set(key, f"busy:{digest}", nx=True, ex=ttl)
        seen = None if fresh else get_redis().get(key)
    except redis.RedisError as exc:
        raise CallbackRefused(503, f"cannot check the nonce (Redis: {type(exc).__name__}); retry later") from None
    if not fresh:
        if seen == f"done:{digest}".encode():
            yield False
            return
        if seen == f"busy:{digest}".encode():
            raise CallbackRefused(503, "the same push is being handled; retry later")
        raise CallbackRefused(403, "nonce already used: a signed URL is accepted once")
    try:
        yield True
    except CallbackRefused:
        with contextlib.suppress(redis.RedisError):
            get_redis().set(key, "refused", xx=True, keepttl=True)
        raise
    except BaseException:
        with contextlib.suppress(redis.RedisError):
            get_redis().delete(key)
        raise
    with contextlib.suppress(redis.RedisError):
        get_redis().set(key, f"done:{digest}", xx=True, keepttl=True)


def read_body(request) -> bytes:
    limit = settings.WECHAT_CALLBACK_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise CallbackRefused(400, "Content-Length is not a number") from None
    if declared > limit:
        raise CallbackRefused(413, f"body over {limit} bytes (WECHAT_CALLBACK_MAX_BYTES)")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise CallbackRefused(413, f"body over {limit} bytes (WECHAT_CALLBACK_MAX_BYTES)")
    return body


def parse_xml(body: bytes) -> Element:
    """defusedxml refuses DTDs and entities after decoding (so in UTF-16 as in UTF-8);
    the depth is counted while parsing, before a deep tree is built."""
    import io

    depth, root = 0, None
    try:
        for event, element in iterparse(io.BytesIO(body), events=("start", "end"), forbid_dtd=True):
            if event == "start":
                depth += 1
                if depth > MAX_DEPTH:
                    raise CallbackRefused(400, f"XML nested deeper than {MAX_DEPTH} elements")
                if root is None:
                    root = element
            else:
                depth -= 1
    except DefusedXmlException as exc:
        raise CallbackRefused(400, f"XML with a DTD or entities is refused ({type(exc).__name__})") from None
    except (ParseError, ValueError, LookupError) as exc:  # LookupError: an unknown declared encoding
        raise CallbackRefused(400, f"body is not well-formed XML: {str(exc)[:200]}") from None
    if root is None:
        raise CallbackRefused(400, "body is not well-formed XML: empty")
    return root


def _text(parent: Element, path: str) -> str:
    return (parent.findtext(path) or "").strip()


def _token(value: str, name: str, *, required: bool) -> str:
    if not value and not required:
        return ""
    if not _TOKEN.fullmatch(value):
        raise CallbackRefused(400, f"{name} must be 1-128 letters, digits or _.=-, got {value[:40]!r}")
    return value


def check_article_url(url: str) -> str:
    """https on one of WeChat's article hosts; the link is shown to editors and readers."""
    hosts = [h.lower() for h in settings.WECHAT_ARTICLE_HOSTS]
    try:
        parsed = parse_strict(url, schemes=("https",))
    except UnsafeUrl as exc:
        raise CallbackRefused(400, f"article_url refused: {exc}") from None
    if parsed.host not in hosts or parsed.port not in (None, 443):
        raise CallbackRefused(400, f"article_url must be https on {', '.join(hosts)} (WECHAT_ARTICLE_HOSTS), "
                                   f"got host {parsed.host[:80]!r}")
    if len(url) > 1024:
        raise CallbackRefused(400, "article_url longer than 1024 characters")
    return url


def publish_event(root: Element) -> PublishEvent | None:
    """The PUBLISHJOBFINISH in a pushed message, checked; None for any other message."""
    if _text(root, "MsgType") != "event" or _text(root, "Event") != "PUBLISHJOBFINISH":
        return None
    info = root.find("PublishEventInfo")
    if info is None:
        raise CallbackRefused(400, "PUBLISHJOBFINISH without PublishEventInfo")
    publish_id = _token(_text(info, "publish_id"), "publish_id", required=True)
    raw_status = _text(info, "publish_status")
    if not _SMALL_INT.fullmatch(raw_status) or int(raw_status) not in PUBLISH_STATUSES:
        raise CallbackRefused(400, f"publish_status must be one of 0-6, got {raw_status[:20]!r}")
    items = info.findall("article_detail/item")
    fails = info.findall("fail_idx")
    if len(items) > MAX_ITEMS or len(fails) > MAX_ITEMS:
        raise CallbackRefused(400, f"more than {MAX_ITEMS} article_detail items or fail_idx entries")
    urls = []
    for item in items:
        url = _text(item, "article_url")
        urls.append(check_article_url(url) if url else "")
    fail_idx = []
    for element in fails:
        text = (element.text or "").strip()
        if not _SMALL_INT.fullmatch(text):  # "²".isdigit() is True, int("²") a ValueError
            raise CallbackRefused(400, f"fail_idx must be an integer of at most 3 digits, got {text[:20]!r}")
        fail_idx.append(int(text))
    return PublishEvent(publish_id=publish_id, status=int(raw_status),
                        article_id=_token(_text(info, "article_id"), "article_id", required=False),
                        urls=urls, fail_idx=fail_idx)


# ---------------------------------------------------------------- compatible and safe modes


def _crypto(token: str):
    from wechat.crypto import CryptoError, WechatCrypto

    key = settings.WECHAT_ENCODING_AES_KEY
    if not key:
        raise CallbackRefused(400, "encrypted message, but WECHAT_ENCODING_AES_KEY is not set: set it to the "
                                   "account console's EncodingAESKey")
    try:
        return WechatCrypto(token=token, encoding_aes_key=key, app_id=settings.WECHAT_APP_ID)
    except CryptoError as exc:
        raise CallbackRefused(503, f"server misconfigured: {exc}") from None


def _decrypt(query, token: str, timestamp: str, nonce: str, encrypt: str) -> bytes:
    """msg_signature over the ciphertext, then AES. Everything refused is a CallbackRefused."""
    from wechat.crypto import CryptoError

    signature = query.get("msg_signature", "")
    if not _SIGNATURE.fullmatch(signature):
        raise CallbackRefused(403, "bad msg_signature: 40 hex digits required with encrypt_type=aes")
    crypto = _crypto(token)
    try:
        crypto.check_signature(signature, timestamp, nonce, encrypt)
    except CryptoError as exc:
        raise CallbackRefused(403, str(exc)) from None
    try:
        return crypto.decrypt(encrypt)
    except CryptoError as exc:
        raise CallbackRefused(400, f"cannot decrypt: {exc}") from None


def is_encrypted(query) -> bool:
    return query.get("encrypt_type", "") == "aes" or "msg_signature" in query


def open_message(root: Element, query, token: str, timestamp: str, nonce: str) -> tuple[Element, str]:
    """The message to believe, and the mode it came in: "plaintext" (the body as it is),
    "compatible" (plaintext fields plus <Encrypt>) or "safe" (only <Encrypt>). In the two
    encrypted modes only the decrypted message is believed: the plaintext copy is not signed."""
    encrypt = root.findtext("Encrypt")
    if encrypt is None and not is_encrypted(query):
        if settings.WECHAT_ENCODING_AES_KEY and not settings.WECHAT_CALLBACK_ALLOW_PLAINTEXT:
            raise CallbackRefused(403, "plaintext message refused: WECHAT_ENCODING_AES_KEY is set and "
                                       "WECHAT_CALLBACK_ALLOW_PLAINTEXT is off")
        return root, "plaintext"
    if encrypt is None:
        raise CallbackRefused(400, "encrypt_type=aes but the body has no Encrypt element")
    inner = parse_xml(_decrypt(query, token, timestamp, nonce, encrypt.strip()))
    mode = "safe" if root.find("MsgType") is None else "compatible"
    return inner, mode


def echo(query, token: str, timestamp: str, nonce: str) -> str:
    """The server check (GET): echostr as it came (plaintext) or decrypted (safe mode)."""
    echostr = query.get("echostr", "")
    if is_encrypted(query):
        plain = _decrypt(query, token, timestamp, nonce, echostr)
        try:
            echostr = plain.decode("ascii")
        except UnicodeDecodeError:
            raise CallbackRefused(400, "decrypted echostr is not ASCII") from None
        if not (0 < len(echostr) <= 128 and echostr.isprintable()):
            raise CallbackRefused(400, "decrypted echostr must be 1-128 printable characters")
        return echostr
    if not (0 < len(echostr) <= 128 and echostr.isascii() and echostr.isalnum()):
        raise CallbackRefused(400, "echostr must be 1-128 letters or digits")
    return echostr
