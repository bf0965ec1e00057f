"""Which news ids exist, for the public endpoint: events for other ids are dropped (and
counted in the answer) instead of buffered, so random ids cannot fill the buffer.

A per-process cache of ids seen to exist keeps the hot path off the database for the items
people are actually reading; only ids not in it cost one primary-key query per request.
An item deleted meanwhile may still get events buffered for KNOWN_TTL_SECONDS: the batch
drops those (analytics/services.py), as it always did.
"""

from __future__ import annotations

import time

from news.models import News

KNOWN_TTL_SECONDS = 60
# Bounds the cache's memory (about 100 bytes an id): past it the cache starts over.
MAX_CACHED_IDS = 100_000

_known: dict[int, float] = {}


def existing_news_ids(ids: set[int]) -> set[int]:
    """The subset of `ids` that are news items (cached ids count as existing)."""
    now = time.monotonic()
    found = {i for i in ids if _known.get(i, 0) > now}
    missing = ids - found
    if missing:
        fresh = set(News.objects.filter(pk__in=missing).values_list("pk", flat=True))
        if len(_known) + len(fresh) > MAX_CACHED_IDS:
            _known.clear()
        expires = now + KNOWN_TTL_SECONDS
        for i in fresh:
            _known[i] = expires
        found |= fresh
    return found


def forget() -> None:
    """Tests: start from an empty cache."""
    _known.clear()
