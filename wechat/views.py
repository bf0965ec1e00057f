"""The account's callback URL: WeChat's server check (GET) and pushed events (POST).
Only PUBLISHJOBFINISH matters here; every other message is acknowledged and ignored.
Plaintext or "compatible" message mode: the encrypted-only mode is not supported."""

from __future__ import annotations

import hashlib
import hmac
import logging
import xml.etree.ElementTree as ET

from django.conf import settings
from django.http import HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from wechat.services import wechat_publish_event

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


def callback_signature(token: str, timestamp: str, nonce: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


@csrf_exempt
@require_http_methods(["GET", "POST"])
def wechat_callback(request):
    token = settings.WECHAT_TOKEN
    if not token:
        return HttpResponse("WECHAT_TOKEN is not set", status=503, content_type="text/plain")
    q = request.GET
    expected = callback_signature(token, q.get("timestamp", ""), q.get("nonce", ""))
    if not hmac.compare_digest(expected, q.get("signature", "")):
        logger.warning("wechat callback: bad signature from %s", request.META.get("REMOTE_ADDR"))
        return HttpResponseForbidden("bad signature")
    if request.method == "GET":
        return HttpResponse(q.get("echostr", ""), content_type="text/plain")
    body = request.body
    # Entities are refused outright: no WeChat message declares any, and they are how an
    # XML body blows up memory.
    if len(body) > MAX_BODY_BYTES or b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        return HttpResponseBadRequest("unacceptable body")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return HttpResponseBadRequest("not XML")
    if root.findtext("MsgType") == "event" and root.findtext("Event") == "PUBLISHJOBFINISH":
        info = root.find("PublishEventInfo")
        try:
            publish_id = (info.findtext("publish_id") or "").strip()
            status = int(info.findtext("publish_status"))
        except (AttributeError, TypeError, ValueError):
            return HttpResponseBadRequest("PublishEventInfo lacks publish_id or publish_status")
        wechat_publish_event(
            publish_id=publish_id, status=status, article_id=(info.findtext("article_id") or "").strip(),
            urls=[(item.findtext("article_url") or "").strip() for item in info.iterfind("article_detail/item")],
            fail_idx=[int(e.text) for e in info.iter("fail_idx") if (e.text or "").strip().isdigit()])
    return HttpResponse("success", content_type="text/plain")
