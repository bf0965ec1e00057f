"""The hot path: validate analytics events and append them to a Redis Stream, the buffer
that `news:analytics` jobs drain (analytics/services.py). One round trip per call (one
all-or-nothing script, analytics/buffer.py), no database access (except, at most once per
few seconds per process, to enqueue the batch job when the buffer has grown past
ANALYTICS_BATCH_THRESHOLD; and, for the public endpoint, to look up news ids not seen
lately).

An event's time is its stream id (Redis's clock, in ms), so the client sends none.
Nothing is trimmed from the stream here: an entry leaves it only after the transaction
that counted it commits.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

from analytics import buffer
from analytics.buffer import NotReplicated  # noqa: F401 - re-exported: the API's names
from analytics.scheduling import enqueue_analytics_batch
from analytics.known_news import existing_news_ids
from analytics.ratelimit import events_key
from analytics.validation import (  # noqa: F401 - re-exported: the API's names
    EVENT_FIELDS,
    EVENT_TYPES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_NEWS_ID,
    MAX_USER_ID_CHARS,
    EventError,
    fields_of,
    validate_event,
)

logger = logging.getLogger(__name__)

STREAM_KEY = "nextevent:analytics:events"
THRESHOLD_FLAG_KEY = "nextevent:analytics:threshold-enqueued"
# Between two threshold enqueues from any process: the job's unique key already keeps at
# most one live, this keeps the hot path off the database while the batch catches up.
THRESHOLD_COOLDOWN_SECONDS = 5

MAX_EVENTS_PER_CALL = 10_000


def record_event(*, news_id: int, event_type: str, user_id: int | str | None = None,
                 metadata: dict | None = None) -> str:
    """Validate one event and append it to the buffer. Returns its stream id
    ("<ms>-<seq>"). Raises EventError (naming the field) before anything is written,
    analytics.buffer.BufferFull past ANALYTICS_BUFFER_MAX_EVENTS / _MAX_BYTES (nothing
    written), and redis.RedisError if Redis cannot be reached."""
    fields = validate_event(news_id, event_type, user_id, metadata)
    length, entry_id = buffer.append(STREAM_KEY, [fields])
    _after_length_check(length)
    return entry_id


def record_events(events: list[dict]) -> int:
    """Validate a list of events (dicts with news_id, event_type and optional user_id and
    metadata) and append them all in one round trip. All or nothing: one invalid event
    raises EventError naming its index and field, a full buffer raises BufferFull, and
    nothing is written. Returns the number of events accepted."""
    entries = validate_events(events)
    if not entries:
        return 0
    length, _ = buffer.append(STREAM_KEY, entries)
    _after_length_check(length)
    return len(entries)


def validate_events(events: list, *, limit: int = MAX_EVENTS_PER_CALL) -> list[dict]:
    """Every event's stream fields, or EventError naming the first bad one's index."""
    if not isinstance(events, list):
        raise EventError("events", f"must be a list of events, got {type(events).__name__}")
    if len(events) > limit:
        raise EventError("events", f"at most {limit} per call, got {len(events)}")
    return [fields_of(event, i) for i, event in enumerate(events)]


def record_client_events(events: list, *, client: str, limit: int) -> tuple[int, int]:
    """The public endpoint's path: validate, drop events for news items that do not exist
    (never buffered), then append the rest in one all-or-nothing step that also spends the
    client's events budget. Returns (accepted, dropped_unknown_news). Raises EventError,
    RateLimited, BufferFull (nothing written), redis.RedisError or DatabaseError."""
    entries = validate_events(events, limit=limit)
    existing = existing_news_ids({fields[b"n"] for fields in entries})
    kept = [fields for fields in entries if fields[b"n"] in existing]
    if kept:
        length, _ = buffer.append(STREAM_KEY, kept, rate_key=events_key(client),
                                  rate_limit=settings.ANALYTICS_RATE_EVENTS,
                                  window_seconds=settings.ANALYTICS_RATE_WINDOW_SECONDS)
        _after_length_check(length)
    return len(kept), len(entries) - len(kept)


# ---------------------------------------------------------------- the threshold


def _after_length_check(length: int) -> None:
    if length < settings.ANALYTICS_BATCH_THRESHOLD:
        return
    try:
        if buffer.buffer_redis().set(THRESHOLD_FLAG_KEY, str(time.time()), nx=True, ex=THRESHOLD_COOLDOWN_SECONDS):
            enqueue_threshold_batch(length)
    except Exception:
        # The events are in the buffer; the 5-minute run will count them.
        logger.exception("analytics: could not enqueue the threshold batch (buffer at %d)", length)


def enqueue_threshold_batch(length: int, reason: str = "threshold") -> int:
    job_id = enqueue_analytics_batch(reason=reason, unique_key="news:analytics:threshold")
    logger.info("analytics: buffer holds %d events; batch job %s enqueued (%s)", length, job_id, reason)
    return job_id


def enqueue_news_analytics(news_id: int, event_type: str, user_id: int | str | None = None,
                           metadata: dict | None = None) -> str:
    """The seed's name for recording one event. On the hot path, so it does not create a
    job: it appends to the analytics buffer in Redis, which `news:analytics` jobs drain."""
    return record_event(news_id=news_id, event_type=event_type, user_id=user_id, metadata=metadata)
