"""Searching WeChat's newest-first listings (the draft box, the publish records) for an
article of ours, by the hidden marker in its content."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings

from wechat.client import PAGE_SIZE
from wechat.models import WechatArticle

# WeChat's clock and ours disagree a little: a draft or publication this much older than our
# request can still be the one it made.
CLOCK_SLACK = timedelta(seconds=120)


def pages(list_page):
    """Items of a newest-first listing (draft/batchget, freepublish/batchget), at most
    WECHAT_SEARCH_PAGES pages: each page is a call against a daily quota."""
    for page in range(settings.WECHAT_SEARCH_PAGES):
        data = list_page(offset=page * PAGE_SIZE, count=PAGE_SIZE)
        items = data.get("item") or []
        yield from items
        if len(items) < PAGE_SIZE or (page + 1) * PAGE_SIZE >= int(data.get("total_count") or 0):
            return


def is_ours(item: dict, article: WechatArticle, *, since: datetime) -> bool:
    """A draft box or publish record item is this article's if its content carries the
    marker; or, should WeChat have dropped the comment, if it has the same title and cover
    and appeared after we sent it."""
    news_items = (item.get("content") or {}).get("news_item") or []
    if any(article.draft_marker and article.draft_marker in (n.get("content") or "") for n in news_items):
        return True
    updated = int(item.get("update_time") or 0)
    return bool(article.thumb_media_id) and updated >= since.timestamp() and any(
        n.get("title") == article.news.title and n.get("thumb_media_id") == article.thumb_media_id
        for n in news_items)



def carries_marker(news_items: list[dict], article: WechatArticle) -> bool:
    """A published article's items (freepublish/getarticle) are this article's: the marker is in
    the content; or, should WeChat have dropped the comment, title and cover are this article's
    (asked only of articles whose submit answer was lost, so a match is one of those)."""
    if any(article.draft_marker and article.draft_marker in (n.get("content") or "") for n in news_items):
        return True
    return bool(article.thumb_media_id) and any(
        n.get("title") == article.news.title and n.get("thumb_media_id") == article.thumb_media_id
        for n in news_items)
