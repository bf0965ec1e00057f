"""WeChat's job types, declared with their policies; discovered at start-up by
jobs.registry.autodiscover(). Handlers are thin: payload in, service call, note out."""

from __future__ import annotations

from jobs.registry import job_type
from wechat.scheduling import (
    WECHAT_DRAFT_CREATION,
    WECHAT_PUBLISHING,
    WECHAT_PUSH_MATCH,
    WechatDraftPayload,
    WechatPublishPayload,
    WechatPushMatchPayload,
)
from wechat.services import wechat_draft_create, wechat_match_push, wechat_publish


@job_type(WECHAT_DRAFT_CREATION, queue="wechat", timeout=300, max_retries=3, payload=WechatDraftPayload,
          subject="news:{news_id}", description="create the WeChat draft of a news item")
def handle_wechat_draft_creation(payload: WechatDraftPayload, job) -> str:
    return wechat_draft_create(news_id=payload.news_id)


@job_type(WECHAT_PUBLISHING, queue="wechat", timeout=300, max_retries=3, payload=WechatPublishPayload,
          subject="news:{news_id}", description="publish a WeChat draft and follow it")
def handle_wechat_publishing(payload: WechatPublishPayload, job) -> str:
    return wechat_publish(news_id=payload.news_id, draft_id=payload.draft_id)


@job_type(WECHAT_PUSH_MATCH, queue="wechat", timeout=120, max_retries=5, payload=WechatPushMatchPayload,
          subject="wechat:publish:{publish_id}",
          description="match a pushed publication whose submit answer was lost to its article")
def handle_wechat_push_match(payload: WechatPushMatchPayload, job) -> str:
    return wechat_match_push(publish_id=payload.publish_id, status=payload.status, article_id=payload.article_id,
                             urls=payload.urls, fail_idx=payload.fail_idx, received_at=payload.received_at)
