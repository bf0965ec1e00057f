"""The one adapter to the WeChat Official Account API: a thin client over requests.

It owns what is WeChat-specific: the access token (one per app, shared by every process
through Redis), JSON sent as UTF-8 without escapes, and the meaning of WeChat's error codes,
turned into exception types here at the edge. Callers decide what each type means for a job.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass

import requests
from urllib3.exceptions import NewConnectionError
from django.conf import settings

from nextevent.redis import delete_if_equal, get_redis

logger = logging.getLogger(__name__)

TOKEN_REFRESH_MARGIN = 300  # seconds: refresh when less than this remains
API_PATH = "/cgi-bin/"
PAGE_SIZE = 20  # draft/batchget and freepublish/batchget take 1..20
TOKEN_LOCK_SECONDS = 10
TOKEN_LOCK_WAIT = 5.0


class WechatError(Exception):
    """A call failed. errcode is WeChat's (None for network and HTTP errors)."""

    def __init__(self, message: str, *, errcode: int | None = None, api: str = ""):
        self.errcode = errcode
        self.api = api
        super().__init__(message)


class WechatTransientError(WechatError):
    """Worth retrying with backoff: system busy, 5xx, network trouble before sending."""


class WechatOutcomeUnknown(WechatTransientError):
    """The request may have reached WeChat (timeout or reset after sending). Retrying is
    safe only for idempotent calls; freepublish/submit must not be repeated blindly."""


class WechatRateLimited(WechatError):
    """Per-minute limits (45011, 53501): wait a minute, not a backoff of seconds."""


class WechatQuotaExhausted(WechatError):
    """The daily quota of this API is used up (45009): wait until it resets at midnight."""


class WechatPermanentError(WechatError):
    """Retrying cannot help: the content was refused, or the draft/publish id is invalid."""


class WechatConfigError(WechatPermanentError):
    """Credentials, IP whitelist or account permissions: a person must act."""


TOKEN_ERRORS = frozenset({40001, 40014, 42001})
TRANSIENT_ERRORS = frozenset({-1})
RATE_LIMIT_ERRORS = frozenset({45011, 53501})
QUOTA_ERRORS = frozenset({45009})
CONFIG_ERRORS = frozenset({40164, 40013, 40125, 40243, 89503, 89506, 89507, 48001, 48004, 50002, 53500})

_TOKEN_IN_TEXT = re.compile(r"(access_token=)[^&\s'\"]+")


def redact(text: str) -> str:
    """Error texts from requests quote the URL, which carries the access token."""
    return _TOKEN_IN_TEXT.sub(r"\1***", text)


def classify(errcode: int, errmsg: str, api: str) -> WechatError:
    message = f"{api}: errcode {errcode}: {errmsg}"
    if errcode in TRANSIENT_ERRORS:
        return WechatTransientError(message, errcode=errcode, api=api)
    if errcode in RATE_LIMIT_ERRORS:
        return WechatRateLimited(message, errcode=errcode, api=api)
    if errcode in QUOTA_ERRORS:
        return WechatQuotaExhausted(message, errcode=errcode, api=api)
    if errcode in CONFIG_ERRORS:
        return WechatConfigError(message, errcode=errcode, api=api)
    # Everything else (bad content, invalid ids, unknown codes) is refused for a reason that
    # a retry does not change. Unknown codes land here on purpose: retrying an unexplained
    # refusal of a non-idempotent call is worse than asking a person.
    return WechatPermanentError(message, errcode=errcode, api=api)


def _sent(exc: requests.RequestException) -> bool:
    """False only when the request certainly never reached the server."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ConnectionError):
        reason = exc.args[0] if exc.args else None
        inner = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
        return not isinstance(inner, NewConnectionError)  # refused, unresolvable host
    return True


@dataclass(frozen=True)
class Upload:
    filename: str  # WeChat needs a real extension (else 40113)
    data: bytes
    content_type: str = "application/octet-stream"


class WechatClient:
    def __init__(self, *, app_id: str, app_secret: str, base_url: str,
                 timeout: tuple[float, float] = (5.0, 30.0), session: requests.Session | None = None):
        if not app_id or not app_secret:
            raise WechatConfigError("WECHAT_APP_ID and WECHAT_APP_SECRET must be set")
        root = base_url.rstrip("/")
        if root.endswith("/cgi-bin"):
            raise WechatConfigError(f"WECHAT_API_BASE_URL is the host root (https://api.weixin.qq.com), "
                                    f"without /cgi-bin: got {base_url!r}")
        self.app_id = app_id
        self._secret = app_secret
        self.base_url = root + API_PATH
        self.timeout = timeout
        self.session = session or requests.Session()

    @classmethod
    def from_settings(cls) -> WechatClient:
        return cls(app_id=settings.WECHAT_APP_ID, app_secret=settings.WECHAT_APP_SECRET,
                   base_url=settings.WECHAT_API_BASE_URL,
                   timeout=(settings.WECHAT_CONNECT_TIMEOUT, settings.WECHAT_READ_TIMEOUT))

    def __repr__(self):
        return f"WechatClient(app_id={self.app_id!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------ access token

    @property
    def _token_key(self) -> str:
        return f"wechat:access_token:{self.app_id}"

    def access_token(self) -> str:
        """The app's token from Redis, fetched under a lock when missing. The stable_token
        API in normal mode returns the current token, so a fetch never invalidates the one
        other processes hold; the lock only saves calls when many miss at once."""
        redis = get_redis()
        cached = redis.get(self._token_key)
        if cached:
            return cached.decode()
        lock_key, owner = f"{self._token_key}:lock", uuid.uuid4().hex
        if not redis.set(lock_key, owner, nx=True, ex=TOKEN_LOCK_SECONDS):
            deadline = time.monotonic() + TOKEN_LOCK_WAIT
            while time.monotonic() < deadline:
                time.sleep(0.05)
                cached = redis.get(self._token_key)
                if cached:
                    return cached.decode()
            # The holder is slow or died: fetching too is harmless with stable_token.
        try:
            return self._fetch_token()
        finally:
            delete_if_equal(redis, lock_key, owner)

    def _fetch_token(self) -> str:
        data = self._request("stable_token", token=None, json_body={
            "grant_type": "client_credential", "appid": self.app_id, "secret": self._secret})
        token, expires_in = data.get("access_token"), data.get("expires_in")
        if not token or not isinstance(expires_in, int):
            raise WechatTransientError("stable_token: response has no access_token/expires_in", api="stable_token")
        # Normal mode returns the current token with what is left of its life: dropped from the
        # cache 5 minutes early, fetched again then, kept to just before its end (not refetched
        # every second of those 5 minutes), and replaced by WeChat once it has expired.
        if expires_in > 2 * TOKEN_REFRESH_MARGIN:
            ttl = expires_in - TOKEN_REFRESH_MARGIN
        else:
            ttl = max(expires_in - 10, 1)
        get_redis().set(self._token_key, token, ex=ttl)
        logger.info("wechat: fetched access token for app %s (expires in %s s)", self.app_id, expires_in)
        return token

    def _evict_token(self, failed: str) -> None:
        # Only the token that failed: another process may already have stored a fresh one.
        delete_if_equal(get_redis(), self._token_key, failed)

    # ------------------------------------------------------------ transport

    def _request(self, api: str, *, token: str | None, method: str = "POST", json_body=None, files=None,
                 params=None) -> dict:
        query = dict(params or {})
        if token is not None:
            query["access_token"] = token
        body, headers = None, {}
        if json_body is not None:
            # WeChat refuses \u-escaped Chinese in titles and authors.
            body = json.dumps(json_body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json; charset=utf-8"
        multipart = None
        if files:
            multipart = {name: (f.filename, f.data, f.content_type) for name, f in files.items()}
        try:
            response = self.session.request(method, self.base_url + api, params=query, data=body, files=multipart,
                                            headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            kind = WechatOutcomeUnknown if _sent(exc) else WechatTransientError
            raise kind(f"{api}: {type(exc).__name__}: {redact(str(exc))}", api=api) from None
        if response.status_code >= 500:
            raise WechatOutcomeUnknown(f"{api}: HTTP {response.status_code}", api=api)
        if response.status_code != 200:
            raise WechatPermanentError(f"{api}: HTTP {response.status_code}", api=api)
        try:
            data = json.loads(response.content.decode("utf-8"))
        except ValueError:
            raise WechatOutcomeUnknown(f"{api}: response is not JSON ({len(response.content)} bytes)",
                                       api=api) from None
        if not isinstance(data, dict):
            raise WechatOutcomeUnknown(f"{api}: response is not a JSON object", api=api)
        # Successes often carry no errcode at all (draft/add): missing means 0.
        errcode = int(data.get("errcode") or 0)
        if errcode == 0:
            return data
        if token is not None and errcode in TOKEN_ERRORS:
            raise _TokenRejected(errcode, api)
        raise classify(errcode, str(data.get("errmsg", "")), api)

    def _call(self, api: str, **kwargs) -> dict:
        current = self.access_token()
        try:
            return self._request(api, token=current, **kwargs)
        except _TokenRejected:
            # A token error means the call was refused, so repeating it once is safe even
            # for freepublish/submit.
            self._evict_token(current)
            try:
                return self._request(api, token=self.access_token(), **kwargs)
            except _TokenRejected as again:
                raise WechatTransientError(f"{api}: access token refused twice (errcode {again.errcode})",
                                           errcode=again.errcode, api=api) from None

    # ------------------------------------------------------------ the API used here

    def add_thumb_material(self, upload: Upload) -> str:
        """Permanent thumb material (a draft's cover: JPG, at most 64 KB). Returns its media_id."""
        data = self._call("material/add_material", params={"type": "thumb"}, files={"media": upload})
        return _required(data, "media_id", "material/add_material")

    def upload_article_image(self, upload: Upload) -> str:
        """An image for use inside article content. Returns its mmbiz.qpic.cn URL."""
        data = self._call("media/uploadimg", files={"media": upload})
        return _required(data, "url", "media/uploadimg")

    def add_draft(self, articles: list[dict]) -> str:
        data = self._call("draft/add", json_body={"articles": articles})
        return _required(data, "media_id", "draft/add")

    def get_draft(self, media_id: str) -> list[dict]:
        """The draft's articles. Raises WechatPermanentError (40007) if it is not in the draft box."""
        return self._call("draft/get", json_body={"media_id": media_id}).get("news_item") or []

    def delete_draft(self, media_id: str) -> None:
        self._call("draft/delete", json_body={"media_id": media_id})

    def count_drafts(self) -> int:
        return int(self._call("draft/count", method="GET").get("total_count") or 0)

    def list_drafts(self, *, offset: int = 0, count: int = PAGE_SIZE, no_content: bool = False) -> dict:
        """One page of the draft box, newest first: {total_count, item_count, item: [{media_id,
        content: {news_item}, update_time}]}."""
        return self._call("draft/batchget", json_body={"offset": offset, "count": count,
                                                       "no_content": int(no_content)})

    def submit_publish(self, media_id: str) -> str:
        """Not idempotent: a second submit publishes twice. Raises WechatOutcomeUnknown when
        the request may have been accepted."""
        data = self._call("freepublish/submit", json_body={"media_id": media_id})
        # Documented as a string, decoded as int64 by Go SDKs: store it as text.
        return str(_required(data, "publish_id", "freepublish/submit"))

    def get_publish_status(self, publish_id: str) -> dict:
        return self._call("freepublish/get", json_body={"publish_id": publish_id})

    def get_article(self, article_id: str) -> list[dict]:
        """A published article's items: [{title, author, digest, content, thumb_media_id, url,
        is_deleted, ...}]. Raises WechatPermanentError (53600) for an article_id WeChat does not know."""
        return self._call("freepublish/getarticle", json_body={"article_id": article_id}).get("news_item") or []

    def list_published(self, *, offset: int = 0, count: int = PAGE_SIZE, no_content: bool = False) -> dict:
        """One page of the published articles, newest first: {total_count, item_count, item:
        [{article_id, content: {news_item: [{..., url}]}, update_time}]}."""
        return self._call("freepublish/batchget", json_body={"offset": offset, "count": count,
                                                             "no_content": int(no_content)})


class _TokenRejected(WechatError):
    def __init__(self, errcode: int, api: str):
        super().__init__(f"{api}: access token refused (errcode {errcode})", errcode=errcode, api=api)


def _required(data: dict, key: str, api: str):
    value = data.get(key)
    if value in (None, ""):
        # Accepted without an id: for submit the outcome is unknown, elsewhere harmless to retry.
        raise WechatOutcomeUnknown(f"{api}: success response without {key}", api=api)
    return value

