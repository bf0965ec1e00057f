"""How to enqueue WeChat's jobs: their names, payloads and the scheduling functions other
code calls. The declarations with their policies and handlers are in wechat/jobs.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jobs.errors import PayloadError
from jobs.payloads import Payload, positive
from jobs.scheduler import enqueue

WECHAT_DRAFT_CREATION = "wechat:draft_creation"
WECHAT_PUBLISHING = "wechat:publishing"
WECHAT_PUSH_MATCH = "wechat:push_match"


@dataclass
class WechatDraftPayload(Payload):
    news_id: int
    retry_count: int = 0

    def validate(self):
        positive("news_id", self.news_id)


@dataclass
class WechatPublishPayload(Payload):
    news_id: int
    draft_id: str
    retry_count: int = 0

    def validate(self):
        positive("news_id", self.news_id)
        if not self.draft_id or len(self.draft_id) > 128:
            raise PayloadError("draft_id", "must be a non-empty string of at most 128 characters")


@dataclass
class WechatPushMatchPayload(Payload):
    """A PUBLISHJOBFINISH for a publish_id no article has (the answer to its submit was lost)."""
    publish_id: str
    status: int
    received_at: datetime
    article_id: str = ""
    urls: list = field(default_factory=list)
    fail_idx: list = field(default_factory=list)

    def validate(self):
        if not self.publish_id or len(self.publish_id) > 128:
            raise PayloadError("publish_id", "must be a non-empty string of at most 128 characters")
        if not 0 <= self.status <= 6:
            raise PayloadError("status", f"must be a publish_status 0-6, got {self.status}")
        if len(self.article_id) > 128:
            raise PayloadError("article_id", "must be at most 128 characters")


def schedule_wechat_draft_creation(news_id: int, delay: float | timedelta = 0) -> int:
    return enqueue(WECHAT_DRAFT_CREATION, {"news_id": news_id, "retry_count": 0},
                   delay=delay, unique_key=f"{WECHAT_DRAFT_CREATION}:{news_id}")


def schedule_wechat_publishing(news_id: int, draft_id: str, delay: float | timedelta = 0) -> int:
    return enqueue(WECHAT_PUBLISHING, {"news_id": news_id, "draft_id": draft_id, "retry_count": 0},
                   delay=delay, unique_key=f"{WECHAT_PUBLISHING}:{news_id}")


def schedule_wechat_push_match(*, publish_id: str, status: int, received_at: datetime, article_id: str = "",
                               urls: list | None = None, fail_idx: list | None = None) -> int:
    """One live job per (publish_id, status): WeChat's repeats of a push add nothing."""
    return enqueue(WECHAT_PUSH_MATCH, {"publish_id": publish_id, "status": status, "received_at": received_at,
                                       "article_id": article_id, "urls": list(urls or []),
                                       "fail_idx": list(fail_idx or [])},
                   unique_key=f"{WECHAT_PUSH_MATCH}:{publish_id}:{status}")
