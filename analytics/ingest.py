"""The hot path: validate analytics events and append them to a Redis Stream, the buffer
that `news:analytics` jobs drain (analytics/services.py). One round trip per call, no
database access (except, at most once per few seconds per process, to enqueue the batch
job when the buffer has grown past ANALYTICS_BATCH_THRESHOLD).

An event's time is its stream id (Redis's clock, in ms), so the client sends none.
Nothing is trimmed from the stream here: an entry leaves it only after the transaction
that counted it commits.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings

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
from nextevent.redis import get_redis

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
    ("<ms>-<seq>"). Raises EventError (naming the field) before anything is written, and
    redis.RedisError if Redis cannot be reached."""
    fields = validate_event(news_id, event_type, user_id, metadata)
    if not _length_check_due(1):
        return get_redis().xadd(STREAM_KEY, fields).decode()
    pipe = get_redis().pipeline(transaction=False)
    pipe.xadd(STREAM_KEY, fields)
    pipe.xlen(STREAM_KEY)
    entry_id, length = pipe.execute()
    _after_length_check(length)
    return entry_id.decode()


def record_events(events: list[dict]) -> int:
    """Validate a list of events (dicts with news_id, event_type and optional user_id and
    metadata) and append them all in one round trip. All or nothing: one invalid event
    raises EventError naming its index and field, and nothing is written. Returns the
    number of events accepted."""
    if not isinstance(events, list):
        raise EventError("events", f"must be a list of events, got {type(events).__name__}")
    if len(events) > MAX_EVENTS_PER_CALL:
        raise EventError("events", f"at most {MAX_EVENTS_PER_CALL} per call, got {len(events)}")
    entries = [fields_of(event, i) for i, event in enumerate(events)]
    if not entries:
        return 0
    pipe = get_redis().pipeline(transaction=False)
    for fields in entries:
        pipe.xadd(STREAM_KEY, fields)
    pipe.xlen(STREAM_KEY)
    results = pipe.execute()
    _after_length_check(results[-1])
    return len(entries)


# ---------------------------------------------------------------- the threshold

_since_check = 0


def _length_check_due(count: int) -> bool:
    """Once per ANALYTICS_LENGTH_CHECK_EVERY events recorded by this process (a race
    between threads only moves the check by a few events)."""
    global _since_check
    _since_check += count
    if _since_check >= settings.ANALYTICS_LENGTH_CHECK_EVERY:
        _since_check = 0
        return True
    return False


def _after_length_check(length: int) -> None:
    if length < settings.ANALYTICS_BATCH_THRESHOLD:
        return
    try:
        if get_redis().set(THRESHOLD_FLAG_KEY, str(time.time()), nx=True, ex=THRESHOLD_COOLDOWN_SECONDS):
            enqueue_threshold_batch(length)
    except Exception:
        # The events are in the buffer; the 5-minute run will count them.
        logger.exception("analytics: could not enqueue the threshold batch (buffer at %d)", length)


def enqueue_threshold_batch(length: int, reason: str = "threshold") -> int:
    from jobs import types
    from jobs.scheduler import enqueue

    job_id = enqueue(types.NEWS_ANALYTICS, {"reason": reason}, unique_key="news:analytics:threshold")
    logger.info("analytics: buffer holds %d events; batch job %s enqueued (%s)", length, job_id, reason)
    return job_id
