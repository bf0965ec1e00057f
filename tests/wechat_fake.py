"""A fake WeChat Official Account API over real HTTP on 127.0.0.1, for tests (and for trying
the pipeline by hand: `python -m tests.wechat_fake --port 8765`).

It keeps the behaviour the client depends on (see /work/shared/notes/wechat-api.md): errors
as HTTP 200 with errcode, successes without errcode, stable_token returning the current token,
multipart uploads needing a filename extension, draft/add refusing unknown cover ids and
\\u-escaped text, a submit that moves the draft out of the draft box, publish_id as a number.
`script(api, ...)` queues what the next calls of one API answer instead: an errcode (int),
("http", status), "drop" (do the work, then close the connection unanswered) or ("delay", s)
(do the work, answer late).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

APP_ID = "wx-test-app"
APP_SECRET = "test-secret-do-not-log"
DEFAULT_THUMB = "MAT_default"
IMAGE_EXTENSIONS = {"bmp", "png", "jpeg", "jpg", "gif"}


class FakeWechat:
    def __init__(self, *, app_id: str = APP_ID, app_secret: str = APP_SECRET):
        self.app_id, self.app_secret = app_id, app_secret
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.calls: list[dict] = []
        self.scripts: dict[str, list] = {}
        self.token: str | None = None
        self.valid_tokens: set[str] = set()
        self.materials: dict[str, bytes] = {DEFAULT_THUMB: b""}
        self.drafts: dict[str, list[dict]] = {}
        self.publishes: dict[int, dict] = {}
        self.images: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type), served at GET
        self.publish_after_gets: int | None = None  # settle a publish after this many freepublish/get
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-wechat", daemon=True)

    # ------------------------------------------------------------ control

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.root + "/cgi-bin/"

    def start(self) -> FakeWechat:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, api: str, *responses) -> None:
        with self.lock:
            self.scripts.setdefault(api, []).extend(responses)

    def revoke_token(self) -> None:
        """As if someone called the plain token API: the current token stops working."""
        with self.lock:
            self.valid_tokens.discard(self.token)
            self.token = None

    def count(self, api: str) -> int:
        return sum(1 for c in self.calls if c["api"] == api)

    def calls_to(self, api: str) -> list[dict]:
        return [c for c in self.calls if c["api"] == api]

    def settle(self, publish_id, status: int = 0) -> dict:
        with self.lock:
            return self._settle(int(publish_id), status)

    def _settle(self, publish_id: int, status: int) -> dict:
        pub = self.publishes[publish_id]
        pub["status"] = status
        if status == 0:
            pub["article_id"] = f"ART_{publish_id}"
            pub["urls"] = [f"https://mp.weixin.qq.com/s/fake{publish_id}"]
        else:
            pub["fail_idx"] = [1]
        return pub

    # ------------------------------------------------------------ the API

    def handle(self, api: str, query: dict, body: bytes, headers) -> dict:
        if api == "stable_token":
            data = json.loads(body)
            if data.get("appid") != self.app_id:
                return {"errcode": 40013, "errmsg": "invalid appid"}
            if data.get("secret") != self.app_secret:
                return {"errcode": 40125, "errmsg": "invalid appsecret"}
            if self.token is None or data.get("force_refresh"):
                self.token = f"TOKEN_{next(self.ids)}"
                self.valid_tokens.add(self.token)
            return {"access_token": self.token, "expires_in": 7200}
        if query.get("access_token") not in self.valid_tokens:
            return {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
        if api in ("material/add_material", "media/uploadimg"):
            media = _multipart(headers.get("Content-Type", ""), body).get("media")
            if media is None:
                return {"errcode": 41005, "errmsg": "media data missing"}
            filename, data = media
            if filename.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS:
                return {"errcode": 40113, "errmsg": "unsupported file type"}
            n = next(self.ids)
            if api == "media/uploadimg":
                return {"url": f"http://mmbiz.qpic.cn/mmbiz_jpg/fake{n}/0"}
            self.materials[f"MAT_{n}"] = data
            return {"media_id": f"MAT_{n}", "url": f"http://mmbiz.qpic.cn/mmbiz_jpg/mat{n}/0"}
        data = json.loads(body or b"{}")
        if api == "draft/add":
            if re.search(rb"\\u[0-9a-fA-F]{4}", body):
                return {"errcode": 45003, "errmsg": "title size out of limit (escaped text)"}
            articles = data.get("articles") or []
            for a in articles:
                if not a.get("title") or not a.get("content"):
                    return {"errcode": 44003, "errmsg": "empty news data"}
                if a.get("thumb_media_id") not in self.materials:
                    return {"errcode": 40007, "errmsg": "invalid media_id"}
            media_id = f"DRAFT_{next(self.ids)}"
            self.drafts[media_id] = articles
            return {"media_id": media_id}
        if api in ("draft/get", "draft/delete"):
            if data.get("media_id") not in self.drafts:
                return {"errcode": 40007, "errmsg": "invalid media_id"}
            if api == "draft/delete":
                del self.drafts[data["media_id"]]
                return {"errcode": 0, "errmsg": "ok"}
            return {"news_item": self.drafts[data["media_id"]]}
        if api == "freepublish/submit":
            if data.get("media_id") not in self.drafts:
                return {"errcode": 40007, "errmsg": "invalid media_id"}
            publish_id = 2247500000 + next(self.ids)
            self.publishes[publish_id] = {"media_id": data["media_id"], "status": 1, "gets": 0,
                                          "articles": self.drafts.pop(data["media_id"])}
            return {"errcode": 0, "errmsg": "ok", "publish_id": publish_id, "msg_data_id": publish_id + 1}
        if api == "freepublish/get":
            pub = self.publishes.get(int(data.get("publish_id", 0)))
            if pub is None:
                return {"errcode": 53502, "errmsg": "invalid publish_id"}
            pub["gets"] += 1
            if pub["status"] == 1 and self.publish_after_gets and pub["gets"] >= self.publish_after_gets:
                self._settle(int(data["publish_id"]), 0)
            out = {"publish_id": str(data["publish_id"]), "publish_status": pub["status"]}
            if pub["status"] == 0:
                out["article_id"] = pub["article_id"]
                out["article_detail"] = {"count": 1, "item": [{"idx": 1, "article_url": pub["urls"][0]}]}
            elif pub["status"] != 1:
                out["fail_idx"] = pub.get("fail_idx", [])
            return out
        return {"errcode": 40066, "errmsg": f"invalid url ({api})"}


@pytest.fixture
def fake_wechat(settings):
    """A running fake, with this process's WeChat settings pointing at it."""
    fake = FakeWechat().start()
    settings.WECHAT_APP_ID, settings.WECHAT_APP_SECRET = APP_ID, APP_SECRET
    settings.WECHAT_API_BASE = fake.base_url
    settings.WECHAT_DEFAULT_THUMB_MEDIA_ID = ""
    settings.WECHAT_CALLBACK_TOKEN = "callback-token"
    yield fake
    fake.stop()


def wechat_env(fake: FakeWechat, **extra) -> dict[str, str]:
    """The same settings for qcluster subprocesses."""
    return {"WECHAT_APP_ID": APP_ID, "WECHAT_APP_SECRET": APP_SECRET, "WECHAT_API_BASE": fake.base_url,
            "WECHAT_CALLBACK_TOKEN": "callback-token", **{k: str(v) for k, v in extra.items()}}


def callback(client, body: bytes = b"", *, token="callback-token", method="post", **query):
    """Call /wechat/callback with the Django test client, signed as WeChat signs."""
    from wechat.views import callback_signature

    params = {"timestamp": "1700000000", "nonce": "n0nce", **query}
    params["signature"] = callback_signature(token, params["timestamp"], params["nonce"])
    url = "/wechat/callback?" + "&".join(f"{k}={v}" for k, v in params.items())
    if method == "get":
        return client.get(url)
    return client.post(url, body, content_type="text/xml")


def publish_event_xml(publish_id, status: int = 0, article_id: str = "", url: str = "") -> bytes:
    items = f"<item><idx>1</idx><article_url><![CDATA[{url}]]></article_url></item>" if url else ""
    fail = "<fail_idx>1</fail_idx>" if status not in (0, 1) else ""
    return (f"<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[mphelper]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[PUBLISHJOBFINISH]]></Event><PublishEventInfo><publish_id>{publish_id}</publish_id>"
            f"<publish_status>{status}</publish_status><article_id><![CDATA[{article_id}]]></article_id>"
            f"<article_detail><count>{1 if url else 0}</count>{items}</article_detail>{fail}</PublishEventInfo>"
            f"</xml>").encode()


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
            if path in fake.images:
                data, kind = fake.images[path]
                return self._send(200, data, kind)
            if path.startswith("/cgi-bin/"):
                return self.do_POST()
            self._send(404, b"not found", "text/plain")

        def do_POST(self):
            parts = urlsplit(self.path)
            api = parts.path.removeprefix("/cgi-bin/")
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with fake.lock:
                fake.calls.append({"api": api, "query": query, "body": body, "at": time.time()})
                scripted = fake.scripts[api].pop(0) if fake.scripts.get(api) else None
                if isinstance(scripted, int):  # an errcode instead of the work
                    result = {"errcode": scripted, "errmsg": f"scripted error {scripted} rid: fake"}
                elif isinstance(scripted, tuple) and scripted[0] == "http":
                    result = None
                else:  # normal, "drop" and ("delay", s) do the work
                    result = fake.handle(api, query, body, self.headers)
            if scripted == "drop":  # accepted, but the answer is lost
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if isinstance(scripted, tuple) and scripted[0] == "http":
                return self._send(scripted[1], b"<html>error</html>", "text/html")
            if isinstance(scripted, tuple) and scripted[0] == "delay":
                time.sleep(scripted[1])
            self._send(200, json.dumps(result, ensure_ascii=False).encode(), "application/json")

        def _send(self, status: int, data: bytes, kind: str):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) or was killed: as WeChat, carry on

    return Handler


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    fake = FakeWechat()
    fake.server.server_close()
    fake.server = ThreadingHTTPServer(("127.0.0.1", args.port), _handler(fake))
    fake.publish_after_gets = 1
    print(f"fake WeChat on {fake.base_url}  WECHAT_APP_ID={APP_ID} WECHAT_APP_SECRET={APP_SECRET} "
          f"WECHAT_DEFAULT_THUMB_MEDIA_ID={DEFAULT_THUMB}")
    fake.server.serve_forever()
