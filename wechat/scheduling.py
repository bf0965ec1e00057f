"""How to enqueue WeChat's jobs: their names, payloads and the scheduling functions other
code calls. The declarations with their policies and handlers are in wechat/jobs.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from jobs.errors import PayloadError
from jobs.payloads import Payload, positive
from jobs.scheduler import enqueue

WECHAT_DRAFT_CREATION = "wechat:draft_creation"
WECHAT_PUBLISHING = "wechat:publishing"


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


def schedule_wechat_draft_creation(news_id: int, delay: float | timedelta = 0) -> int:
    return enqueue(WECHAT_DRAFT_CREATION, {"news_id": news_id, "retry_count": 0},
                   delay=delay, unique_key=f"{WECHAT_DRAFT_CREATION}:{news_id}")


def schedule_wechat_publishing(news_id: int, draft_id: str, delay: float | timedelta = 0) -> int:
    return enqueue(WECHAT_PUBLISHING, {"news_id": news_id, "draft_id": draft_id, "retry_count": 0},
                   delay=delay, unique_key=f"{WECHAT_PUBLISHING}:{news_id}")
