"""The account's callback URL: WeChat's server check (GET) and pushed events (POST).
Only PUBLISHJOBFINISH matters here; every other message is acknowledged and ignored.
Plaintext or "compatible" message mode: the encrypted-only mode is not supported.
What a request must pass (signature, timestamp window, one use per nonce, body limits,
field checks) is in wechat/callback_security.py; a refusal is a 4xx naming the problem."""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from wechat import callback_security as security
from wechat.services import wechat_publish_event

logger = logging.getLogger(__name__)


def _text(body: str, status: int = 200) -> HttpResponse:
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


@csrf_exempt
@require_http_methods(["GET", "POST"])
def wechat_callback(request):
    token = settings.WECHAT_TOKEN
    if not token:
        return _text("WECHAT_TOKEN is not set", 503)
    try:
        timestamp, nonce = security.verify_query(request.GET, token)
        if request.method == "GET":
            echostr = request.GET.get("echostr", "")
            if not (0 < len(echostr) <= 128 and echostr.isascii() and echostr.isalnum()):
                raise security.CallbackRefused(400, "echostr must be 1-128 letters or digits")
            with security.nonce_once(timestamp, nonce):
                return _text(echostr)
        with security.nonce_once(timestamp, nonce):
            event = security.publish_event(security.parse_xml(security.read_body(request)))
            if event is not None:
                wechat_publish_event(publish_id=event.publish_id, status=event.status, article_id=event.article_id,
                                     urls=event.urls, fail_idx=event.fail_idx)
    except security.CallbackRefused as refused:
        logger.warning("wechat callback refused (%s) from %s: %s", refused.status,
                       request.META.get("REMOTE_ADDR"), refused.message)
        return _text(refused.message, refused.status)
    return _text("success")
