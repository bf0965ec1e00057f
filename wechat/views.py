"""The account's callback URL: WeChat's server check (GET) and pushed events (POST).
Only PUBLISHJOBFINISH matters here; every other message is acknowledged and ignored.
All three message modes of the console work: plaintext, compatible and safe (the last two
need WECHAT_ENCODING_AES_KEY). What a request must pass (signature, timestamp window, one
use per nonce, body limits, msg_signature and decryption, field checks) is in
wechat/callback_security.py; a refusal is a 4xx naming the problem and a warning log line.
The view only writes to the database: it never calls WeChat (a push for a publish_id we do
not know is matched to its article by a job, wechat:push_match).
"""

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
            echostr = security.echo(request.GET, token, timestamp, nonce)
            with security.nonce_once(timestamp, nonce):
                return _text(echostr)
        body = security.read_body(request)
        with security.nonce_once(timestamp, nonce, body) as fresh:
            if not fresh:
                logger.info("wechat callback: repeated push (nonce %s) answered again, nothing changed", nonce)
                return _text("success")
            message, mode = security.open_message(security.parse_xml(body), request.GET, token, timestamp, nonce)
            event = security.publish_event(message)
            if event is not None:
                state = wechat_publish_event(publish_id=event.publish_id, status=event.status,
                                             article_id=event.article_id, urls=event.urls, fail_idx=event.fail_idx)
                logger.info("wechat callback: PUBLISHJOBFINISH publish %s status %s (%s mode) -> %s",
                            event.publish_id, event.status, mode, state or "matching in a job")
    except security.CallbackRefused as refused:
        logger.warning("wechat callback refused (%s) from %s: %s", refused.status,
                       request.META.get("REMOTE_ADDR"), refused.message)
        return _text(refused.message, refused.status)
    return _text("success")
