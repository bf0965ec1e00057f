"""Signals the news app sends; other apps connect to them in their AppConfig.ready()."""

from django.dispatch import Signal

# Sent with `news_id` after an item is published, inside the publishing transaction: a
# receiver's writes (WeChat queueing its draft) commit or roll back with the publish.
news_published = Signal()
