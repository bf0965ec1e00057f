"""WeChat's job types, declared with their policies; discovered at start-up by
jobs.registry.autodiscover(). Handlers are thin: payload in, service call, note out."""

from __future__ import annotations

from jobs.registry import job_type
from wechat.scheduling import WECHAT_DRAFT_CREATION, WECHAT_PUBLISHING, WechatDraftPayload, WechatPublishPayload
from wechat.services import wechat_draft_create, wechat_publish


@job_type(WECHAT_DRAFT_CREATION, queue="wechat", timeout=300, max_retries=3, payload=WechatDraftPayload,
          subject="news:{news_id}", description="create the WeChat draft of a news item")
def handle_wechat_draft_creation(payload: WechatDraftPayload, job) -> str:
    return wechat_draft_create(news_id=payload.news_id)


@job_type(WECHAT_PUBLISHING, queue="wechat", timeout=300, max_retries=3, payload=WechatPublishPayload,
          subject="news:{news_id}", description="publish a WeChat draft and follow it")
def handle_wechat_publishing(payload: WechatPublishPayload, job) -> str:
    return wechat_publish(news_id=payload.news_id, draft_id=payload.draft_id)
