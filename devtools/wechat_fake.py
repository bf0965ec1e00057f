"""A fake WeChat Official Account API over real HTTP, for tests and for running the whole
flow without an account (`python manage.py fake_wechat`, used by the quick start).

It answers as the real API does (see /work/shared/notes/wechat-api.md), under /cgi-bin/:
token and stable_token, material/add_material, media/uploadimg, draft/add, draft/get,
draft/batchget, draft/delete, draft/count, freepublish/submit, freepublish/get and
freepublish/batchget. Errors are HTTP 200 with errcode, successes mostly without one; tokens
expire and are invalidated (the plain token API invalidates the previous one, which lives 5
more minutes); every API has its daily quota (45009 when used up); drafts are checked against
the field limits (45003 title, 45004 digest, 45110 author, 45166 content, 40007 unknown
media id, 40113 bad file type); a submit takes the draft out of the draft box, and a
publication settles after N freepublish/get calls or N seconds, then is POSTed as a signed
PUBLISHJOBFINISH push to the callback URL, if one is set.

Fault injection: `script(api, *responses)` queues what the next calls of one API do instead:
an errcode (int), ("http", status), "drop" (do the work, then close the connection
unanswered: e.g. a submit accepted whose reply is lost), "close" (close the connection
without doing anything) or ("delay", s) (do the work, answer s seconds late).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
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
OLD_TOKEN_GRACE = 300  # seconds a replaced token keeps working (the plain token API)

LIMITS = {"title": 32, "author": 16, "digest": 128, "content_chars": 20000, "content_bytes": 1024 * 1024,
          "content_source_url": 1024, "articles": 8, "thumb_bytes": 64 * 1024, "image_bytes": 10 * 1024 * 1024,
          "uploadimg_bytes": 1024 * 1024}
# Daily quotas of a new account (None: not limited here).
QUOTAS = {"token": 2000, "stable_token": 500_000, "draft/add": 1000, "draft/get": 500, "draft/batchget": 1000,
          "draft/delete": 1000, "draft/count": 1000, "freepublish/submit": 100, "freepublish/get": 100,
          "freepublish/batchget": 100, "material/add_material": 1000, "media/uploadimg": 1000}
PUBLISH_STATUS_FAILED = (2, 3, 4)


def _err(code: int, message: str) -> dict:
    return {"errcode": code, "errmsg": f"{message} rid: fake-{int(time.time() * 1000) % 10**8}"}


class FakeWechat:
    def __init__(self, *, app_id: str = APP_ID, app_secret: str = APP_SECRET, host: str = "127.0.0.1",
                 port: int = 0, publish_polls: int | None = None, publish_seconds: float | None = None,
                 publish_status: int = 0, callback_url: str = "", callback_token: str = "",
                 token_ttl: int = 7200, limits: dict | None = None, quotas: dict | None = None,
                 log_calls: bool = False):
        self.app_id, self.app_secret = app_id, app_secret
        # A publication settles (to publish_status) at the publish_polls-th freepublish/get of
        # it, or publish_seconds after the submit, whichever comes first; neither: only settle().
        self.publish_polls, self.publish_seconds, self.publish_status = publish_polls, publish_seconds, publish_status
        self.callback_url, self.callback_token = callback_url, callback_token
        self.token_ttl = token_ttl
        self.old_token_grace = OLD_TOKEN_GRACE
        self.limits = {**LIMITS, **(limits or {})}
        self.quotas = {**QUOTAS, **(quotas or {})}
        self._initial_quotas = dict(self.quotas)
        self.log_calls = log_calls
        self.lock = threading.RLock()
        self.ids = itertools.count(1)
        self.calls: list[dict] = []
        self.scripts: dict[str, list] = {}
        self.used: dict[str, int] = {}
        self.token: str | None = None
        self.tokens: dict[str, float] = {}  # token -> when it expires (42001), time.time()
        self.replaced: dict[str, float] = {}  # token -> when, replaced, it stops working (40001)
        self.materials: dict[str, dict] = {DEFAULT_THUMB: {"type": "thumb", "data": b"", "filename": "default.jpg"}}
        self.uploaded_images: dict[str, bytes] = {}  # mmbiz URL -> bytes (media/uploadimg)
        self.drafts: dict[str, dict] = {}  # media_id -> {articles, update_time}, oldest first
        self.publishes: dict[int, dict] = {}  # publish_id -> {media_id, status, gets, articles, ...}
        self.published: dict[str, dict] = {}  # article_id -> {publish_id, news_item, update_time}
        self.pushes: list[dict] = []  # PUBLISHJOBFINISH pushes sent: {publish_id, status, http_status}
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

    def revoke_token(self) -> None:
        """As if someone else force-refreshed: the current token stops working (40001)."""
        with self.lock:
            self.tokens.pop(self.token, None)
            self.token = None

    def expire_token(self) -> None:
        """The current token reaches the end of its life now (42001 on its next use)."""
        with self.lock:
            if self.token:
                self.tokens[self.token] = time.time() - 1

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
        with self.lock:
            pub = self._settle(int(publish_id), status)
        self._push(pub)
        return pub

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
        else:
            pub["fail_idx"] = [1]
            if status in PUBLISH_STATUS_FAILED:
                # A failed publish leaves the draft in the draft box.
                self.drafts[pub["media_id"]] = {"articles": pub["articles"], "update_time": now}
        pub["pending_push"] = True
        return pub

    def _settle_due(self) -> list[dict]:
        """Publications whose time has come (lazily, on any call; a timer covers idle times)."""
        if self.publish_seconds is None:
            return []
        now = time.time()
        return [self._settle(pid, self.publish_status) for pid, pub in self.publishes.items()
                if pub["status"] == 1 and now >= pub["submitted_at"] + self.publish_seconds]

    def _push(self, pub: dict) -> None:
        if not pub.pop("pending_push", False) or not self.callback_url:
            return
        threading.Thread(target=self._send_push, args=(pub,), name="fake-wechat-push", daemon=True).start()

    def _send_push(self, pub: dict) -> None:
        import requests

        timestamp, nonce = str(int(time.time())), f"{next(self.ids)}"
        query = {"signature": signature(self.callback_token, timestamp, nonce), "timestamp": timestamp,
                 "nonce": nonce}
        body = publish_event_xml(pub["publish_id"], pub["status"], pub.get("article_id", ""),
                                 (pub.get("urls") or [""])[0])
        sep = "&" if "?" in self.callback_url else "?"
        try:
            response = requests.post(f"{self.callback_url}{sep}{urlencode(query)}", data=body, timeout=10,
                                     headers={"Content-Type": "text/xml"})
            outcome = response.status_code
        except requests.RequestException as exc:
            outcome = f"{type(exc).__name__}"
        with self.lock:
            self.pushes.append({"publish_id": pub["publish_id"], "status": pub["status"], "http_status": outcome})
        logger.info("fake wechat: pushed PUBLISHJOBFINISH of publish %s (status %s): %s", pub["publish_id"],
                    pub["status"], outcome)

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
            return _err(40001, "invalid credential, access_token is invalid or not latest")
        if time.time() >= expires:
            return _err(42001, "access_token expired")
        method = getattr(self, "_api_" + api.replace("/", "_"), None)
        if method is None:
            return _err(40066, f"invalid url ({api})")
        if (quota_error := self._spend(api)) is not None:
            return quota_error
        if api in ("material/add_material", "media/uploadimg"):
            return method(query, _multipart(headers.get("Content-Type", ""), body))
        data = _json(body)
        if data is None:
            return _err(47001, "data format error")
        return method(data, body) if api == "draft/add" else method(data)

    def _spend(self, api: str) -> dict | None:
        limit = self.quotas.get(api)
        if limit is not None and self.used.get(api, 0) >= limit:
            return _err(45009, "reach max api daily quota limit")
        self.used[api] = self.used.get(api, 0) + 1
        return None

    def _new_token(self, *, previous_grace: float | None) -> str:
        now = time.time()
        if self.token in self.tokens and previous_grace is not None:
            self.replaced[self.token] = now + previous_grace
        self.token = f"TOKEN_{next(self.ids)}_{hashlib.sha1(str(now).encode()).hexdigest()[:8]}"
        self.tokens[self.token] = now + self.token_ttl
        return self.token

    def _credentials_error(self, appid, secret) -> dict | None:
        if appid != self.app_id:
            return _err(40013, "invalid appid")
        if secret != self.app_secret:
            return _err(40125, "invalid appsecret")
        return None

    def _api_token(self, query: dict) -> dict:
        if query.get("grant_type") != "client_credential":
            return _err(40002, "invalid grant_type")
        if (error := self._credentials_error(query.get("appid"), query.get("secret"))) is not None:
            return error
        if (quota_error := self._spend("token")) is not None:
            return quota_error
        # Each call issues a new token; the previous one works 5 more minutes.
        return {"access_token": self._new_token(previous_grace=self.old_token_grace), "expires_in": self.token_ttl}

    def _api_stable_token(self, data: dict | None) -> dict:
        if not data or data.get("grant_type") != "client_credential":
            return _err(40002, "invalid grant_type")
        if (error := self._credentials_error(data.get("appid"), data.get("secret"))) is not None:
            return error
        if (quota_error := self._spend("stable_token")) is not None:
            return quota_error
        now = time.time()
        current = self.tokens.get(self.token)
        if data.get("force_refresh") or current is None or now >= current:
            self._new_token(previous_grace=0 if data.get("force_refresh") else None)
        # Normal mode: the current token with what is left of its life.
        return {"access_token": self.token, "expires_in": int(self.tokens[self.token] - now)}

    def _api_material_add_material(self, query: dict, parts: dict) -> dict:
        kind = query.get("type")
        if kind not in ("thumb", "image"):
            return _err(40004, "invalid media type")
        if "media" not in parts:
            return _err(41005, "media data missing")
        filename, data = parts["media"]
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if kind == "thumb":
            if ext not in ("jpg", "jpeg") or not data.startswith(b"\xff\xd8\xff"):
                return _err(40113, "unsupported file type: thumb must be a jpg")
            if len(data) > self.limits["thumb_bytes"]:
                return _err(45001, "media size out of limit")
        else:
            if ext not in ("bmp", "png", "jpeg", "jpg", "gif"):
                return _err(40113, "unsupported file type")
            if len(data) > self.limits["image_bytes"]:
                return _err(45001, "media size out of limit")
        n = next(self.ids)
        media_id = f"MAT_{n}"
        self.materials[media_id] = {"type": kind, "data": data, "filename": filename}
        return {"media_id": media_id, "url": f"http://mmbiz.qpic.cn/mmbiz_jpg/mat{n}/0?wx_fmt=jpeg"}

    def _api_media_uploadimg(self, query: dict, parts: dict) -> dict:
        if "media" not in parts:
            return _err(41005, "media data missing")
        filename, data = parts["media"]
        if filename.rsplit(".", 1)[-1].lower() not in ("jpg", "jpeg", "png"):
            return _err(40113, "unsupported file type")
        if len(data) >= self.limits["uploadimg_bytes"]:
            return _err(40009, "invalid image size")
        url = f"http://mmbiz.qpic.cn/mmbiz_jpg/img{next(self.ids)}/0"
        self.uploaded_images[url] = data
        return {"url": url}

    def _api_draft_add(self, data: dict, body: bytes) -> dict:
        if re.search(rb"\\u[0-9a-fA-F]{4}", body):
            return _err(45003, "title size out of limit (\\u-escaped text is not accepted)")
        articles = data.get("articles")
        if not isinstance(articles, list) or not articles:
            return _err(44003, "empty news data")
        if len(articles) > self.limits["articles"]:
            return _err(45008, "article size out of limit")
        for a in articles:
            if (error := self._article_error(a)) is not None:
                return error
        media_id = f"DRAFT_{next(self.ids)}_{hashlib.sha1(body).hexdigest()[:10]}"
        self.drafts[media_id] = {"articles": articles, "update_time": int(time.time())}
        return {"media_id": media_id}

    def _article_error(self, a: dict) -> dict | None:
        limits = self.limits
        if not a.get("title") or not a.get("content"):
            return _err(44003, "empty news data")
        if len(a["title"]) > limits["title"]:
            return _err(45003, "title size out of limit")
        if len(a.get("author") or "") > limits["author"]:
            return _err(45110, "author size out of limit")
        if len(a.get("digest") or "") > limits["digest"]:
            return _err(45004, "description size out of limit")
        content = a["content"]
        if len(content) >= limits["content_chars"] or len(content.encode()) >= limits["content_bytes"]:
            return _err(45166, "invalid content")
        if len((a.get("content_source_url") or "").encode()) > limits["content_source_url"]:
            return _err(45005, "url size out of limit")
        if a.get("article_type", "news") == "news":
            material = self.materials.get(a.get("thumb_media_id"))
            if material is None or material["type"] not in ("thumb", "image"):
                return _err(40007, "invalid media_id")
        return None

    def _draft_or_error(self, data: dict):
        draft = self.drafts.get(data.get("media_id"))
        return draft, (None if draft is not None else _err(40007, "invalid media_id"))

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
            return _err(40007, "invalid media_id")
        publish_id = 2247500000 + next(self.ids)
        self.publishes[publish_id] = {"publish_id": publish_id, "media_id": media_id, "status": 1, "gets": 0,
                                      "articles": self.drafts.pop(media_id)["articles"], "submitted_at": time.time()}
        if self.publish_seconds is not None:
            timer = threading.Timer(self.publish_seconds, self._settle_on_time, args=(publish_id,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return {"errcode": 0, "errmsg": "ok", "publish_id": publish_id, "msg_data_id": publish_id + 1}

    def _settle_on_time(self, publish_id: int) -> None:
        with self.lock:
            pub = self._settle(publish_id, self.publish_status)
        self._push(pub)

    def _api_freepublish_get(self, data: dict) -> dict:
        try:
            pub = self.publishes.get(int(data.get("publish_id", 0)))
        except (TypeError, ValueError):
            pub = None
        if pub is None:
            return _err(53502, "invalid publish_id")
        pub["gets"] += 1
        if pub["status"] == 1 and self.publish_polls and pub["gets"] >= self.publish_polls:
            self._settle(pub["publish_id"], self.publish_status)
        out = {"publish_id": str(pub["publish_id"]), "publish_status": pub["status"]}
        if pub["status"] == 0:
            out["article_id"] = pub["article_id"]
            out["article_detail"] = {"count": len(pub["urls"]), "item": [
                {"idx": i, "article_url": url} for i, url in enumerate(pub["urls"], 1)]}
        elif pub["status"] != 1:
            out["fail_idx"] = pub.get("fail_idx", [])
        return out

    def _api_freepublish_batchget(self, data: dict) -> dict:
        rows = [{"article_id": article_id, "news_item": p["news_item"], "update_time": p["update_time"]}
                for article_id, p in sorted(self.published.items(), key=lambda kv: -kv[1]["publish_id"])]
        return _page(data, rows, id_key="article_id")


def _page(data: dict, rows: list[dict], *, id_key: str) -> dict:
    offset, count = data.get("offset"), data.get("count")
    if not isinstance(offset, int) or offset < 0 or not isinstance(count, int) or not 1 <= count <= 20:
        return _err(40097, "invalid args: offset >= 0, count 1..20")
    no_content = bool(data.get("no_content"))
    items = []
    for row in rows[offset:offset + count]:
        news_item = [{k: v for k, v in a.items() if not (no_content and k == "content")} for a in row["news_item"]]
        items.append({id_key: row[id_key], "content": {"news_item": news_item}, "update_time": row["update_time"]})
    return {"total_count": len(rows), "item_count": len(items), "item": items}


def signature(token: str, timestamp: str, nonce: str) -> str:
    """How WeChat signs the requests it sends to the account's callback URL."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


def publish_event_xml(publish_id, status: int = 0, article_id: str = "", url: str = "") -> bytes:
    """A PUBLISHJOBFINISH push body, as WeChat sends it."""
    items = f"<item><idx>1</idx><article_url><![CDATA[{url}]]></article_url></item>" if url else ""
    fail = "<fail_idx>1</fail_idx>" if status not in (0, 1) else ""
    return (f"<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[mphelper]]></FromUserName>"
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
