"""Pushing a published news item to the WeChat Official Account: draft, submit, follow.

Two jobs carry an item (jobs run at least once, so both are written to run again safely):
- drafts.py      `wechat:draft_creation`: images, the draft (once), then enqueue publishing;
- publishing.py  `wechat:publishing`: submit at most once, reconcile an unanswered submit, poll;
- callback.py    settle a publication from the PUBLISHJOBFINISH push or a poll;
- matching.py    `wechat:push_match`: a push for a publish_id we never got, matched by content;
- media.py       cover and content images, each uploaded once;
- records.py     search the draft box and the publish records for our marker;
- errors.py      WeChat's errors as the engine's outcomes; quota.py the daily budgets;
- people.py      the admin's retry and resolve actions.
"""

from wechat.services.callback import wechat_publish_event
from wechat.services.drafts import wechat_draft_create, wechat_on_news_published, wechat_push
from wechat.services.matching import wechat_match_push
from wechat.services.media import DEFAULT_THUMB_PATH
from wechat.services.people import wechat_resolve_unknown, wechat_retry
from wechat.services.publishing import wechat_publish
from wechat.services.quota import next_quota_reset

__all__ = ["DEFAULT_THUMB_PATH", "next_quota_reset", "wechat_draft_create", "wechat_match_push",
           "wechat_on_news_published", "wechat_publish", "wechat_publish_event", "wechat_push", "wechat_resolve_unknown",
           "wechat_retry"]
