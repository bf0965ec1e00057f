"""WeChat's reactions to other apps' signals."""

from wechat.services import wechat_on_news_published


def wechat_news_published(sender, *, news_id: int, **kwargs) -> None:
    """news.signals.news_published: sent inside the publishing transaction."""
    wechat_on_news_published(news_id)
