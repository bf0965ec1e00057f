"""A fake WeChat Official Account API over real HTTP, for tests and for running the whole
flow without an account (`python manage.py fake_wechat`, used by the quick start).

It answers as the documentation says the real API does (see /work/shared/notes/wechat-api.md),
under /cgi-bin/: token and stable_token, material/add_material, media/uploadimg, draft/add,
draft/get, draft/batchget, draft/delete, draft/count, freepublish/submit, freepublish/get,
freepublish/getarticle and freepublish/batchget, and it pushes PUBLISHJOBFINISH to the
callback URL as WeChat does. Every rule it enforces is in the tables just below (LIMITS,
ERRCODES, QUOTAS, TIMING, BEHAVIOUR), each with its source, so a reader can compare them
with the documentation; "unverified" marks what sources disagree on (the stricter is taken).

Where WeChat's timing varies, it is configurable: how long a publication takes to settle
(publish_seconds; or, a test convenience, at the publish_polls-th freepublish/get of it),
what it settles to (publish_status 0, or a failure 2-4), a later deletion or ban (5, 6:
`unpublish()`), how long the push waits for an answer and how often it retries
(push_timeout, push_retries), and the callback's message mode (callback_mode plaintext,
compatible or safe, with encoding_aes_key).

Forgotten state, as the account console's delete (or a fake started afresh) leaves it:
`forget(media_id_or_url)` deletes permanent material or an in-article image, `forget_draft(media_id)`
a draft from the box; WeChat then refuses them with 40007 where they are used.

Fault injection: `script(api, *responses)` queues what the next calls of one API do instead:
an errcode (int), ("http", status), "drop" (do the work, then close the connection
unanswered: e.g. a submit accepted whose reply is lost), "close" (close the connection
without doing anything) or ("delay", s) (do the work, answer s seconds late).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import re
import struct
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

logger = logging.getLogger(__name__)

APP_ID = "wx-test-app"
APP_SECRET = "test-secret-do-not-log"
DEFAULT_THUMB = "MAT_default"  # a permanent thumb material every fake account has

# ---------------------------------------------------------------- the rules, in one place

# Field and file limits. Text limits are checked both ways, characters and UTF-8 bytes: the
# docs count characters, practitioners hit errors at byte counts (unverified), so a value
# must pass both.
LIMITS = {
    "title_chars": 32,            # draft/add docs: title at most 32 characters
    "title_bytes": 64,            # practitioners: 45003 at 64 bytes (unverified)
    "author_chars": 16,           # draft/add docs: author at most 16 characters
    "author_bytes": 24,           # practitioners: about 8 Chinese characters (unverified)
    "digest_chars": 128,          # draft/add docs: digest at most 128 characters
    "digest_bytes": 360,          # practitioners: about 120 Chinese characters (unverified)
    "content_chars": 20000,       # draft/add docs: content under 20,000 characters...
    "content_bytes": 1024 * 1024,  # ...and under 1 MB
    "content_source_url_bytes": 1024,  # draft/add docs: 1 KB
    "articles": 8,                # articles per draft (unverified)
    "thumb_bytes": 64 * 1024,     # material/add_material type=thumb: JPG, 64 KB
    "image_bytes": 10 * 1024 * 1024,  # type=image: bmp/png/jpeg/jpg/gif, 10 MB
    "uploadimg_bytes": 1024 * 1024,  # media/uploadimg: jpg/png under 1 MB
}
# The documented error codes it answers with.
ERRCODES = {
    "invalid_credential": 40001,  # token invalid or not the latest
    "invalid_grant_type": 40002,
    "invalid_media_type": 40004,  # add_material type= not thumb/image
    "invalid_file_type": 40005,   # media/uploadimg: not jpg/png (its docs say 40005, not 40113)
    "invalid_media_id": 40007,    # unknown draft or material
    "invalid_image_size": 40009,  # media/uploadimg: 1 MB or more
    "invalid_appid": 40013,
    "invalid_url": 40066,
    "unsupported_file_type": 40113,  # add_material: wrong extension or not a JPG thumb
    "invalid_secret": 40125,
    "media_missing": 41005,
    "token_expired": 42001,
    "empty_news": 44003,
    "media_size": 45001,
    "title_size": 45003,          # also \u-escaped title or author (the docs refuse escaped Chinese there)
    "digest_size": 45004,
    "url_size": 45005,
    "article_count": 45008,
    "quota": 45009,
    "author_size": 45110,
    "content_size": 45166,
    "data_format": 47001,
    "invalid_args": 40097,        # batchget offset/count out of range
    "invalid_publish_id": 53502,
    "invalid_article_id": 53600,
    "minute_limit": 45011,
}
# Daily quotas of a new account (the notes' table; they grow with followers).
QUOTAS = {"token": 2000, "stable_token": 500_000, "stable_token:force_refresh": 20, "draft/add": 1000,
          "draft/get": 500, "draft/batchget": 1000, "draft/delete": 1000, "draft/count": 1000,
          "freepublish/submit": 100, "freepublish/get": 100, "freepublish/getarticle": 100,
          "freepublish/batchget": 100, "material/add_material": 1000, "media/uploadimg": 1000}
# Timing (seconds). Defaults as documented; each is an attribute of FakeWechat to change.
TIMING = {
    "token_ttl": 7200,            # expires_in of both token APIs
    "old_token_grace": 300,       # cgi-bin/token: the previous token keeps working 5 minutes
    "force_refresh_gap": 30,      # stable_token force_refresh: at most every 30 s (else the current one)
    "push_timeout": 5,            # WeChat waits 5 s for the callback's answer...
    "push_retries": 3,            # ...and retries 3 times
}
PUBLISH_STATUS_FAILED = (2, 3, 4)  # original-content check, normal failure, platform audit
PUBLISH_STATUS_GONE = (5, 6)       # deleted by the user / banned, after success
# Behaviour, as the notes describe it:
# - cgi-bin/token and stable_token issue separate tokens that do not affect each other.
#   token: each call issues a new token; the previous one works old_token_grace more seconds.
#   stable_token: returns the current stable token with its remaining life; force_refresh
#   replaces it (the old one stops at once), 20 a day, at most every force_refresh_gap s.
# - freepublish/submit is not idempotent: each call is a new publication, even of a draft
#   already publishing. The draft stays in the draft box while publishing (publish_status 1),
#   leaves it on success, stays on failure (2-4).
# - freepublish/get answers for a publish_id; article_id and article_detail only on success.
# - freepublish/batchget lists successful publications only (5/6 as is_deleted).
# - freepublish/getarticle returns a published article's items (with content) by article_id.
# - The PUBLISHJOBFINISH push carries publish_id, publish_status, article_id (on success),
#   article_detail and fail_idx; it is retried when not answered (HTTP 200) in push_timeout.
# - JSON bodies: a \u escape is refused only in title and author; the text "\u" is fine anywhere.
# - draft/add refuses a thumb_media_id that is not (or no longer) permanent material, and
#   freepublish/submit a media_id not (or no longer) in the draft box: 40007 invalid media_id.
# - draft/add refuses content whose <img> points at an in-article image URL of WeChat's that it
#   no longer has (deleted, or issued by an earlier fake) with 40007 (unverified: WeChat may
#   strip the image instead; the stricter is taken). URLs it never issued are left alone.


# An in-article image URL as this fake (any instance of it) hands them out from media/uploadimg.
_FAKE_IMAGE_URL = re.compile(r"http://mmbiz\.qpic\.cn/mmbiz_jpg/img\d+_[0-9a-f]{6}/0")


def _err(code: int, message: str) -> dict:
    return {"errcode": code, "errmsg": f"{message} rid: fake-{int(time.time() * 1000) % 10**8}"}


class FakeWechat:
    def __init__(self, *, app_id: str = APP_ID, app_secret: str = APP_SECRET, host: str = "127.0.0.1",
                 port: int = 0, publish_polls: int | None = None, publish_seconds: float | None = None,
                 publish_status: int = 0, callback_url: str = "", callback_token: str = "",
                 callback_mode: str = "plaintext", encoding_aes_key: str = "", token_ttl: int = TIMING["token_ttl"],
                 limits: dict | None = None, quotas: dict | None = None, log_calls: bool = False):
        self.app_id, self.app_secret = app_id, app_secret
        # A publication settles (to publish_status) publish_seconds after its submit, or (a test
        # convenience, not WeChat's behaviour) at the publish_polls-th freepublish/get of it;
        # neither: only settle(). Both are read at submit time, per publication.
        self.publish_polls, self.publish_seconds, self.publish_status = publish_polls, publish_seconds, publish_status
        self.callback_url, self.callback_token = callback_url, callback_token
        self.callback_mode, self.encoding_aes_key = callback_mode, encoding_aes_key
        self.token_ttl = token_ttl
        self.old_token_grace = TIMING["old_token_grace"]
        self.force_refresh_gap = TIMING["force_refresh_gap"]
        self.push_timeout, self.push_retries = TIMING["push_timeout"], TIMING["push_retries"]
        self.limits = {**LIMITS, **(limits or {})}
        self.quotas = {**QUOTAS, **(quotas or {})}
        self._initial_quotas = dict(self.quotas)
        self.log_calls = log_calls
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        # In its ids and URLs: a fake started afresh (the quick start run again) must not hand
        # out the same ids as the one before, which an application may still have cached.
        self.instance = os.urandom(3).hex()
        self.calls: list[dict] = []
        self.scripts: dict[str, list] = {}
        self.used: dict[str, int] = {}
        # Two token families that do not affect each other: cgi-bin/token and stable_token.
        self.plain_token: str | None = None
        self.stable_token: str | None = None
        self.last_force_refresh = 0.0
        self.tokens: dict[str, float] = {}  # token -> when it expires (42001), time.time()
        self.replaced: dict[str, float] = {}  # token -> when, replaced, it stops working (40001)
        self.materials: dict[str, dict] = {DEFAULT_THUMB: {"type": "thumb", "data": b"", "filename": "default.jpg"}}
        self.uploaded_images: dict[str, bytes] = {}  # mmbiz URL -> bytes (media/uploadimg)
        self.drafts: dict[str, dict] = {}  # media_id -> {articles, update_time}, oldest first
        self.publishes: dict[int, dict] = {}  # publish_id -> {media_id, status, gets, articles, ...}
        self.published: dict[str, dict] = {}  # article_id -> {publish_id, news_item, update_time}
        # Every push attempt: {publish_id, status, http_status, attempt, mode, answer}
        self.pushes: list[dict] = []
        self.images: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type), served at GET
        self.redirects: dict[str, str] = {}  # path -> Location, served at GET with 302
        self._timers: list[threading.Timer] = []
        self.server = ThreadingHTTPServer((host, port), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-wechat", daemon=True)

    # ------------------------------------------------------------ control

    @property
    def base_url(self) -> str:
        """What WECHAT_API_BASE_URL is set to: the host root (the client adds /cgi-bin/)."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    root = base_url

    @property
    def token(self) -> str | None:
        """The current stable token (what the project's client uses)."""
        return self.stable_token

    def start(self) -> FakeWechat:
        self.thread.start()
        return self

    def stop_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()

    def stop(self) -> None:
        self.stop_timers()
        self.server.shutdown()
        self.server.server_close()

    def script(self, api: str, *responses) -> None:
        with self.lock:
            self.scripts.setdefault(api, []).extend(responses)

    def forget(self, media_id_or_url: str) -> None:
        """As the console's delete of a material: a permanent media_id, or an in-article image's URL."""
        with self.lock:
            if self.materials.pop(media_id_or_url, None) is None and \
                    self.uploaded_images.pop(media_id_or_url, None) is None:
                raise KeyError(f"the fake never had {media_id_or_url!r}")

    def forget_draft(self, media_id: str) -> None:
        """As the console's delete of a draft in the draft box."""
        with self.lock:
            del self.drafts[media_id]

    def revoke_token(self) -> None:
        """As if someone else force-refreshed: the current tokens stop working (40001)."""
        with self.lock:
            for token in (self.plain_token, self.stable_token):
                self.tokens.pop(token, None)
            self.plain_token = self.stable_token = None

    def expire_token(self) -> None:
        """The current tokens reach the end of their life now (42001 on their next use)."""
        with self.lock:
            for token in (self.plain_token, self.stable_token):
                if token:
                    self.tokens[token] = time.time() - 1

    def exhaust_quota(self, api: str) -> None:
        with self.lock:
            self.used[api] = self.quotas.get(api) or 0
            self.quotas[api] = self.used[api]

    def reset_quotas(self) -> None:
        """Midnight in Beijing (or clear_quota)."""
        with self.lock:
            self.used.clear()
            self.quotas = dict(self._initial_quotas)

    def count(self, api: str) -> int:
        return sum(1 for c in self.calls if c["api"] == api)

    def calls_to(self, api: str) -> list[dict]:
        return [c for c in self.calls if c["api"] == api]

    def settle(self, publish_id, status: int = 0) -> dict:
        """Publishing of publish_id ends now with `status` (0 or 2-4); pushed if a callback is set."""
        with self.lock:
            pub = self._settle(int(publish_id), status)
        self._push(pub)
        return pub

    def unpublish(self, publish_id, status: int = 5) -> dict:
        """Later: the user deletes it (5) or WeChat bans it (6). No push (none is documented)."""
        if status not in PUBLISH_STATUS_GONE:
            raise ValueError("status must be 5 (deleted) or 6 (banned)")
        with self.lock:
            pub = self.publishes[int(publish_id)]
            if pub["status"] != 0:
                raise ValueError(f"publish {publish_id} is not a success (status {pub['status']})")
            pub["status"] = status
            for item in self.published[pub["article_id"]]["news_item"]:
                item["is_deleted"] = True
        return pub

    def push_again(self, publish_id, *, same_query: bool = True) -> None:
        """Send a settled publication's push once more, now (same signed URL, or signed anew)."""
        pub = self.publishes[int(publish_id)]
        self._send_push(pub, query=pub.get("last_push_query") if same_query else None, retries=0)

    # ------------------------------------------------------------ settling and the push

    def _settle(self, publish_id: int, status: int) -> dict:
        pub = self.publishes[publish_id]
        if pub["status"] != 1:
            return pub
        pub["status"] = status
        now = int(time.time())
        if status == 0:
            pub["article_id"] = f"ART_{publish_id}"
            pub["urls"] = [f"https://mp.weixin.qq.com/s/fake{publish_id}_{i}"
                           for i in range(1, len(pub["articles"]) + 1)]
            items = [{**a, "url": url, "is_deleted": False} for a, url in zip(pub["articles"], pub["urls"])]
            self.published[pub["article_id"]] = {"publish_id": publish_id, "news_item": items, "update_time": now}
            # Published: the draft leaves the draft box.
            self.drafts.pop(pub["media_id"], None)
        else:
            # A failed publication leaves the draft in the box (it never left it).
            pub["fail_idx"] = [1]
        pub["pending_push"] = True
        return pub

    def _settle_due(self) -> list[dict]:
        """Publications whose time has come (lazily, on any call; a timer covers idle times)."""
        now = time.time()
        return [self._settle(pid, pub["settles_to"]) for pid, pub in self.publishes.items()
                if pub["status"] == 1 and pub["settle_at"] is not None and now >= pub["settle_at"]]

    def _push(self, pub: dict) -> None:
        if not pub.pop("pending_push", False) or not self.callback_url:
            return
        threading.Thread(target=self._send_push, args=(pub,), name="fake-wechat-push", daemon=True).start()

    def push_query_and_body(self, pub: dict) -> tuple[dict, bytes]:
        """The signed query and the body of a push in the configured mode."""
        timestamp, nonce = str(int(time.time())), f"{next(self.ids)}{os.urandom(4).hex()}"
        plain = publish_event_xml(pub["publish_id"], pub["status"], pub.get("article_id", ""),
                                  (pub.get("urls") or [""])[0], to_user=f"gh_{self.app_id[-8:]}")
        return self.signed_message(plain, timestamp, nonce)

    def signed_message(self, plain: bytes, timestamp: str, nonce: str) -> tuple[dict, bytes]:
        query = {"signature": signature(self.callback_token, timestamp, nonce), "timestamp": timestamp,
                 "nonce": nonce, "openid": "mphelper"}
        if self.callback_mode == "plaintext":
            return query, plain
        encrypt = aes_encrypt(self.encoding_aes_key, plain, self.app_id)
        query.update(encrypt_type="aes", msg_signature=msg_signature(self.callback_token, timestamp, nonce, encrypt))
        if self.callback_mode == "safe":
            body = (f"<xml><ToUserName><![CDATA[gh_{self.app_id[-8:]}]]></ToUserName>"
                    f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>").encode()
        elif self.callback_mode == "compatible":  # the plaintext fields, plus the same message encrypted
            body = plain.replace(b"</xml>", f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode())
        else:
            raise ValueError(f"callback_mode must be plaintext, compatible or safe, not {self.callback_mode!r}")
        return query, body

    def _send_push(self, pub: dict, *, query: dict | None = None, retries: int | None = None) -> None:
        import requests

        if query is None:
            query, body = self.push_query_and_body(pub)
            pub["last_push_query"], pub["last_push_body"] = query, body
        else:
            body = pub["last_push_body"]
        retries = self.push_retries if retries is None else retries
        sep = "&" if "?" in self.callback_url else "?"
        for attempt in range(1 + retries):
            # WeChat's retries of one push: the same message (unverified whether it signs it anew).
            try:
                response = requests.post(f"{self.callback_url}{sep}{urlencode(query)}", data=body,
                                         timeout=self.push_timeout, headers={"Content-Type": "text/xml"})
                outcome, answer = response.status_code, response.text[:200]
            except requests.RequestException as exc:
                outcome, answer = type(exc).__name__, ""
            with self.lock:
                self.pushes.append({"publish_id": pub["publish_id"], "status": pub["status"], "http_status": outcome,
                                    "attempt": attempt + 1, "mode": self.callback_mode, "answer": answer})
            logger.info("fake wechat: pushed PUBLISHJOBFINISH of publish %s (status %s, %s mode, attempt %s): %s",
                        pub["publish_id"], pub["status"], self.callback_mode, attempt + 1, outcome)
            # Answered in time: done (whatever the answer; WeChat does not document retrying a 4xx).
            if isinstance(outcome, int) and outcome < 500:
                return

    def verify_url(self, echostr: str = "5724381093477") -> tuple[int, str]:
        """The console's server check (GET) in the configured mode: (HTTP status, answer)."""
        import requests

        timestamp, nonce = str(int(time.time())), f"{next(self.ids)}{os.urandom(4).hex()}"
        query = {"signature": signature(self.callback_token, timestamp, nonce), "timestamp": timestamp,
                 "nonce": nonce}
        if self.callback_mode == "safe":
            encrypted = aes_encrypt(self.encoding_aes_key, echostr.encode(), self.app_id)
            query.update(echostr=encrypted, encrypt_type="aes",
                         msg_signature=msg_signature(self.callback_token, timestamp, nonce, encrypted))
        else:
            query["echostr"] = echostr
        response = requests.get(self.callback_url, params=query, timeout=self.push_timeout)
        return response.status_code, response.text

    # ------------------------------------------------------------ the API

    def handle(self, api: str, query: dict, body: bytes, headers) -> dict:
        """One call, under self.lock. Returns the JSON answer."""
        if api == "token":
            return self._api_token(query)
        if api == "stable_token":
            return self._api_stable_token(_json(body))
        token = query.get("access_token")
        expires = self.tokens.get(token)
        if expires is None or time.time() >= self.replaced.get(token, float("inf")):
            return _err(ERRCODES["invalid_credential"], "invalid credential, access_token is invalid or not latest")
        if time.time() >= expires:
            return _err(ERRCODES["token_expired"], "access_token expired")
        method = getattr(self, "_api_" + api.replace("/", "_"), None)
        if method is None:
            return _err(ERRCODES["invalid_url"], f"invalid url ({api})")
        if (quota_error := self._spend(api)) is not None:
            return quota_error
        if api in ("material/add_material", "media/uploadimg"):
            return method(query, _multipart(headers.get("Content-Type", ""), body))
        data = _json(body)
        if data is None:
            return _err(ERRCODES["data_format"], "data format error")
        return method(data, body) if api == "draft/add" else method(data)

    def _spend(self, api: str) -> dict | None:
        limit = self.quotas.get(api)
        if limit is not None and self.used.get(api, 0) >= limit:
            return _err(ERRCODES["quota"], "reach max api daily quota limit")
        self.used[api] = self.used.get(api, 0) + 1
        return None

    def _issue(self, kind: str) -> str:
        now = time.time()
        token = f"{kind.upper()}_{next(self.ids)}_{hashlib.sha1(str(now).encode()).hexdigest()[:8]}"
        self.tokens[token] = now + self.token_ttl
        return token

    def _credentials_error(self, appid, secret) -> dict | None:
        if appid != self.app_id:
            return _err(ERRCODES["invalid_appid"], "invalid appid")
        if secret != self.app_secret:
            return _err(ERRCODES["invalid_secret"], "invalid appsecret")
        return None

    def _api_token(self, query: dict) -> dict:
        if query.get("grant_type") != "client_credential":
            return _err(ERRCODES["invalid_grant_type"], "invalid grant_type")
        if (error := self._credentials_error(query.get("appid"), query.get("secret"))) is not None:
            return error
        if (quota_error := self._spend("token")) is not None:
            return quota_error
        # Each call issues a new token; the previous one (of this API only) works 5 more minutes.
        if self.plain_token in self.tokens:
            self.replaced[self.plain_token] = time.time() + self.old_token_grace
        self.plain_token = self._issue("token")
        return {"access_token": self.plain_token, "expires_in": self.token_ttl}

    def _api_stable_token(self, data: dict | None) -> dict:
        if not data or data.get("grant_type") != "client_credential":
            return _err(ERRCODES["invalid_grant_type"], "invalid grant_type")
        if (error := self._credentials_error(data.get("appid"), data.get("secret"))) is not None:
            return error
        if (quota_error := self._spend("stable_token")) is not None:
            return quota_error
        now = time.time()
        current = self.tokens.get(self.stable_token)
        force = bool(data.get("force_refresh")) and now - self.last_force_refresh >= self.force_refresh_gap
        if force:
            if (quota_error := self._spend("stable_token:force_refresh")) is not None:
                return quota_error
            self.last_force_refresh = now
            if self.stable_token:
                self.replaced[self.stable_token] = now  # force_refresh: the old one stops at once
        if force or current is None or now >= current:
            self.stable_token = self._issue("stable")
        # Normal mode: the current token with what is left of its life.
        return {"access_token": self.stable_token, "expires_in": int(self.tokens[self.stable_token] - now)}

    def _api_material_add_material(self, query: dict, parts: dict) -> dict:
        kind = query.get("type")
        if kind not in ("thumb", "image"):
            return _err(ERRCODES["invalid_media_type"], "invalid media type")
        if "media" not in parts:
            return _err(ERRCODES["media_missing"], "media data missing")
        filename, data = parts["media"]
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if kind == "thumb":
            if ext not in ("jpg", "jpeg") or not data.startswith(b"\xff\xd8\xff"):
                return _err(ERRCODES["unsupported_file_type"], "unsupported file type: thumb must be a jpg")
            if len(data) > self.limits["thumb_bytes"]:
                return _err(ERRCODES["media_size"], "media size out of limit")
        else:
            if ext not in ("bmp", "png", "jpeg", "jpg", "gif"):
                return _err(ERRCODES["unsupported_file_type"], "unsupported file type")
            if len(data) > self.limits["image_bytes"]:
                return _err(ERRCODES["media_size"], "media size out of limit")
        n = next(self.ids)
        media_id = f"MAT_{n}_{self.instance}"
        self.materials[media_id] = {"type": kind, "data": data, "filename": filename}
        return {"media_id": media_id, "url": f"http://mmbiz.qpic.cn/mmbiz_jpg/mat{n}/0?wx_fmt=jpeg"}

    def _api_media_uploadimg(self, query: dict, parts: dict) -> dict:
        if "media" not in parts:
            return _err(ERRCODES["media_missing"], "media data missing")
        filename, data = parts["media"]
        if filename.rsplit(".", 1)[-1].lower() not in ("jpg", "jpeg", "png"):
            return _err(ERRCODES["invalid_file_type"], "invalid file type")
        if len(data) >= self.limits["uploadimg_bytes"]:
            return _err(ERRCODES["invalid_image_size"], "invalid image size")
        url = f"http://mmbiz.qpic.cn/mmbiz_jpg/img{next(self.ids)}_{self.instance}/0"
        self.uploaded_images[url] = data
        return {"url": url}

    def _api_draft_add(self, data: dict, body: bytes) -> dict:
        articles = data.get("articles")
        if not isinstance(articles, list) or not articles:
            return _err(ERRCODES["empty_news"], "empty news data")
        if len(articles) > self.limits["articles"]:
            return _err(ERRCODES["article_count"], "article size out of limit")
        for a in articles:
            if not isinstance(a, dict):
                return _err(ERRCODES["data_format"], "data format error")
            if (error := self._escaped_error(a, body)) is not None:
                return error
            if (error := self._article_error(a)) is not None:
                return error
        media_id = f"DRAFT_{next(self.ids)}_{hashlib.sha1(body).hexdigest()[:10]}"
        self.drafts[media_id] = {"articles": articles, "update_time": int(time.time())}
        return {"media_id": media_id}

    @staticmethod
    def _escaped_error(a: dict, body: bytes) -> dict | None:
        """The docs refuse \\u-escaped Chinese in title and author: the raw body must carry
        those two fields' non-ASCII text as UTF-8. A literal "\\u" typed in any field is fine."""
        for field in ("title", "author"):
            value = a.get(field)
            if isinstance(value, str) and not value.isascii():
                raw = json.dumps(value, ensure_ascii=False)[1:-1].encode()
                if raw not in body:
                    return _err(ERRCODES["title_size"], f"{field}: \\\\u-escaped text is not accepted")
        return None

    def _text_error(self, a: dict, field: str, code: str, message: str) -> dict | None:
        value = a.get(field) or ""
        if not isinstance(value, str):
            return _err(ERRCODES["data_format"], f"{field} must be a string")
        if len(value) > self.limits[f"{field}_chars"] or len(value.encode()) > self.limits[f"{field}_bytes"]:
            return _err(ERRCODES[code], message)
        return None

    def _article_error(self, a: dict) -> dict | None:
        limits = self.limits
        if not a.get("title") or not a.get("content"):
            return _err(ERRCODES["empty_news"], "empty news data")
        for field, code, message in (("title", "title_size", "title size out of limit"),
                                     ("author", "author_size", "author size out of limit"),
                                     ("digest", "digest_size", "description size out of limit")):
            if (error := self._text_error(a, field, code, message)) is not None:
                return error
        content = a["content"]
        if len(content) >= limits["content_chars"] or len(content.encode()) >= limits["content_bytes"]:
            return _err(ERRCODES["content_size"], "invalid content")
        if len((a.get("content_source_url") or "").encode()) > limits["content_source_url_bytes"]:
            return _err(ERRCODES["url_size"], "url size out of limit")
        if a.get("article_type", "news") == "news":
            material = self.materials.get(a.get("thumb_media_id"))
            if material is None or material["type"] not in ("thumb", "image"):
                return _err(ERRCODES["invalid_media_id"], "invalid media_id")
        for src in _FAKE_IMAGE_URL.findall(content):
            if src not in self.uploaded_images:
                return _err(ERRCODES["invalid_media_id"], "invalid media_id")
        return None

    def _draft_or_error(self, data: dict):
        draft = self.drafts.get(data.get("media_id"))
        return draft, (None if draft is not None else _err(ERRCODES["invalid_media_id"], "invalid media_id"))

    def _api_draft_get(self, data: dict) -> dict:
        draft, error = self._draft_or_error(data)
        return error or {"news_item": [{**a, "url": f"http://mp.weixin.qq.com/s?draft={data['media_id']}"}
                                       for a in draft["articles"]]}

    def _api_draft_delete(self, data: dict) -> dict:
        draft, error = self._draft_or_error(data)
        if error:
            return error
        del self.drafts[data["media_id"]]
        return {"errcode": 0, "errmsg": "ok"}

    def _api_draft_count(self, data: dict) -> dict:
        return {"total_count": len(self.drafts)}

    def _api_draft_batchget(self, data: dict) -> dict:
        rows = [{"media_id": media_id, "news_item": d["articles"], "update_time": d["update_time"]}
                for media_id, d in reversed(self.drafts.items())]  # newest first
        return _page(data, rows, id_key="media_id")

    def _api_freepublish_submit(self, data: dict) -> dict:
        media_id = data.get("media_id")
        if media_id not in self.drafts:
            return _err(ERRCODES["invalid_media_id"], "invalid media_id")
        publish_id = 2247500000 + next(self.ids)
        now = time.time()
        # The draft stays in the box while WeChat publishes it.
        self.publishes[publish_id] = {
            "publish_id": publish_id, "media_id": media_id, "status": 1, "gets": 0,
            "articles": [dict(a) for a in self.drafts[media_id]["articles"]], "submitted_at": now,
            "settles_to": self.publish_status, "settle_polls": self.publish_polls,
            "settle_at": None if self.publish_seconds is None else now + self.publish_seconds}
        if self.publish_seconds is not None:
            timer = threading.Timer(self.publish_seconds, self._settle_on_time, args=(publish_id,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return {"errcode": 0, "errmsg": "ok", "publish_id": publish_id, "msg_data_id": publish_id + 1}

    def _settle_on_time(self, publish_id: int) -> None:
        with self.lock:
            pub = self.publishes[publish_id]
            pub = self._settle(publish_id, pub["settles_to"])
        self._push(pub)

    def _api_freepublish_get(self, data: dict) -> dict:
        try:
            pub = self.publishes.get(int(data.get("publish_id", 0)))
        except (TypeError, ValueError):
            pub = None
        if pub is None:
            return _err(ERRCODES["invalid_publish_id"], "invalid publish_id")
        pub["gets"] += 1
        if pub["status"] == 1 and pub["settle_polls"] and pub["gets"] >= pub["settle_polls"]:
            self._settle(pub["publish_id"], pub["settles_to"])
        out = {"publish_id": str(pub["publish_id"]), "publish_status": pub["status"]}
        if pub["status"] in (0, *PUBLISH_STATUS_GONE):
            out["article_id"] = pub["article_id"]
            out["article_detail"] = {"count": len(pub["urls"]), "item": [
                {"idx": i, "article_url": url} for i, url in enumerate(pub["urls"], 1)]}
        elif pub["status"] != 1:
            out["fail_idx"] = pub.get("fail_idx", [])
        return out

    def _api_freepublish_getarticle(self, data: dict) -> dict:
        published = self.published.get(data.get("article_id"))
        if published is None:
            return _err(ERRCODES["invalid_article_id"], "invalid article_id")
        return {"news_item": [dict(item) for item in published["news_item"]]}

    def _api_freepublish_batchget(self, data: dict) -> dict:
        # Successes only (deleted or banned ones flagged is_deleted); nothing still publishing.
        rows = [{"article_id": article_id, "news_item": p["news_item"], "update_time": p["update_time"]}
                for article_id, p in sorted(self.published.items(), key=lambda kv: -kv[1]["publish_id"])]
        return _page(data, rows, id_key="article_id")


def _page(data: dict, rows: list[dict], *, id_key: str) -> dict:
    offset, count = data.get("offset"), data.get("count")
    if not isinstance(offset, int) or offset < 0 or not isinstance(count, int) or not 1 <= count <= 20:
        return _err(ERRCODES["invalid_args"], "invalid args: offset >= 0, count 1..20")
    no_content = bool(data.get("no_content"))
    items = []
    for row in rows[offset:offset + count]:
        news_item = [{k: v for k, v in a.items() if not (no_content and k == "content")} for a in row["news_item"]]
        items.append({id_key: row[id_key], "content": {"news_item": news_item}, "update_time": row["update_time"]})
    return {"total_count": len(rows), "item_count": len(items), "item": items}


def signature(token: str, timestamp: str, nonce: str) -> str:
    """How WeChat signs the requests it sends to the account's callback URL."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


def msg_signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """The compatible and safe modes' signature: over the ciphertext too."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


def aes_encrypt(encoding_aes_key: str, message: bytes, app_id: str) -> str:
    """WeChat's message encryption, written here independently of wechat/crypto.py so that the
    round trips test one against the other: key = base64(EncodingAESKey + "="), AES-256-CBC,
    IV = key[:16], PKCS#7 to 32 bytes, over 16 random bytes + length + message + app id."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = base64.b64decode(encoding_aes_key + "=")
    plain = os.urandom(16) + struct.pack(">I", len(message)) + message + app_id.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def publish_event_xml(publish_id, status: int = 0, article_id: str = "", url: str = "",
                      to_user: str = "gh_test") -> bytes:
    """A PUBLISHJOBFINISH push body, as WeChat sends it (article_id and the URLs on success)."""
    items = f"<item><idx>1</idx><article_url><![CDATA[{url}]]></article_url></item>" if url else ""
    fail = "<fail_idx>1</fail_idx>" if status not in (0, 1, 5, 6) else ""
    return (f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><FromUserName><![CDATA[mphelper]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[PUBLISHJOBFINISH]]></Event><PublishEventInfo><publish_id>{publish_id}</publish_id>"
            f"<publish_status>{status}</publish_status><article_id><![CDATA[{article_id}]]></article_id>"
            f"<article_detail><count>{1 if url else 0}</count>{items}</article_detail>{fail}</PublishEventInfo>"
            f"</xml>").encode()


def _json(body: bytes):
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    out = {}
    if msg.is_multipart():
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            out[name] = (part.get_filename() or "", part.get_payload(decode=True))
    return out


def _handler(fake: FakeWechat):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = urlsplit(self.path).path
            if path in fake.redirects:
                self.send_response(302)
                self.send_header("Location", fake.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path in fake.images:
                data, kind = fake.images[path]
                return self._send(200, data, kind)
            if path.startswith("/cgi-bin/"):
                return self.do_POST()
            self._send(404, b"not found", "text/plain")

        def do_POST(self):
            parts = urlsplit(self.path)
            if not parts.path.startswith("/cgi-bin/"):
                return self._send(404, b"not found", "text/plain")
            api = parts.path.removeprefix("/cgi-bin/")
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with fake.lock:
                settled = fake._settle_due()
                fake.calls.append({"api": api, "query": query, "body": body, "at": time.time()})
                scripted = fake.scripts[api].pop(0) if fake.scripts.get(api) else None
                if isinstance(scripted, int):  # an errcode instead of the work
                    result = _err(scripted, f"scripted error {scripted}")
                elif scripted == "close" or (isinstance(scripted, tuple) and scripted[0] == "http"):
                    result = None
                else:  # normal, "drop" and ("delay", s) do the work
                    result = fake.handle(api, query, body, self.headers)
                fake.calls[-1]["result"] = result
            for pub in settled:
                fake._push(pub)
            if fake.log_calls:
                code = result.get("errcode", 0) if isinstance(result, dict) else scripted
                logger.info("fake wechat: %s -> %s", api, code)
            if scripted in ("drop", "close"):  # no answer: accepted ("drop") or not ("close")
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if isinstance(scripted, tuple) and scripted[0] == "http":
                return self._send(scripted[1], b"<html>error</html>", "text/html")
            if isinstance(scripted, tuple) and scripted[0] == "delay":
                time.sleep(scripted[1])
            self._send(200, json.dumps(result, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def _send(self, status: int, data: bytes, kind: str):
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) or was killed: as WeChat, carry on

    return Handler
