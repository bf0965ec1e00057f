"""How to enqueue analytics work: the batch job's name and payload. Events themselves are not
jobs: the seed's `enqueue_news_analytics` is in analytics/ingest.py and appends to the
buffer. The declaration with its policy and handler is in analytics/jobs.py."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.payloads import Payload
from jobs.scheduler import enqueue

NEWS_ANALYTICS = "news:analytics"


@dataclass
class NewsAnalyticsPayload(Payload):
    """Drain the analytics buffer into counters. Empty: the buffer holds the events."""

    reason: str = "periodic"


def enqueue_analytics_batch(*, reason: str, unique_key: str) -> int:
    """One batch run; the unique key keeps at most one live run per trigger."""
    return enqueue(NEWS_ANALYTICS, {"reason": reason}, unique_key=unique_key)

