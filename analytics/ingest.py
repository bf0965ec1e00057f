"""The hot path: validate analytics events and append them to a Redis Stream, the buffer
that `news:analytics` jobs drain (analytics/services.py). One round trip per call, no
database access (except, at most once per few seconds per process, to enqueue the batch
job when the buffer has grown past ANALYTICS_BATCH_THRESHOLD).

An event's time is its stream id (Redis's clock, in ms), so the client sends none.
Nothing is trimmed from the stream here: an entry leaves it only after the transaction
that counted it commits.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

import redis
from django.conf import settings

from nextevent.redis import get_redis

logger = logging.getLogger(__name__)

STREAM_KEY = "nextevent:analytics:events"
THRESHOLD_FLAG_KEY = "nextevent:analytics:threshold-enqueued"
# Between two threshold enqueues from any process: the job's unique key already keeps at
# most one live, this keeps the hot path off the database while the batch catches up.
THRESHOLD_COOLDOWN_SECONDS = 5

# The one place to add an event type: its name -> the News running-total field it adds to
# (None: daily counters only).
EVENT_TYPES: dict[str, str | None] = {"view": "view_count", "share": "share_count", "like": "like_count"}

EVENT_FIELDS = ("news_id", "event_type", "user_id", "metadata")
MAX_NEWS_ID = 2**63 - 1
MAX_USER_ID_CHARS = 64
MAX_METADATA_BYTES = 4096
MAX_EVENTS_PER_CALL = 10_000


class EventError(ValueError):
    """An event is invalid. `field` names it; `index` is its place in a batch (else None)."""

    def __init__(self, field: str, message: str, index: int | None = None):
        self.field = field
        self.index = index
        self.message = message
        where = field if index is None else f"events[{index}].{field}"
        super().__init__(f"{where}: {message}")


def validate_event(news_id: Any, event_type: Any, user_id: Any = None, metadata: Any = None,
                   *, index: int | None = None) -> dict[bytes, bytes | str | int]:
    """The stream entry's fields for a valid event: n (news id), t (type), u (user, if
    any), m (metadata as compact JSON, if any). Raises EventError naming the field."""
    if isinstance(news_id, bool) or not isinstance(news_id, int) or not 0 < news_id <= MAX_NEWS_ID:
        raise EventError("news_id", f"must be a positive integer, got {news_id!r}", index)
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise EventError("event_type", f"must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}", index)
    fields: dict[bytes, bytes | str | int] = {b"n": news_id, b"t": event_type}
    if user_id is not None:
        if isinstance(user_id, bool) or not isinstance(user_id, (int, str)):
            raise EventError("user_id", f"must be a string or an integer, got {user_id!r}", index)
        user = str(user_id)
        if not user or len(user) > MAX_USER_ID_CHARS:
            raise EventError("user_id", f"must be 1 to {MAX_USER_ID_CHARS} characters, got {user[:80]!r}", index)
        if user != user.strip():
            # MariaDB compares strings ignoring trailing spaces: "ann " would be "ann".
            raise EventError("user_id", f"must not start or end with whitespace, got {user!r}", index)
        fields[b"u"] = _utf8(user, "user_id", index)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise EventError("metadata", f"must be a JSON object, got {type(metadata).__name__}", index)
        try:
            # allow_nan=False: NaN is not JSON, and MariaDB's JSON check would refuse the
            # whole chunk later.
            text = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise EventError("metadata", f"must be JSON-serialisable: {exc}", index) from None
        data = _utf8(text, "metadata", index)
        if len(data) > MAX_METADATA_BYTES:
            raise EventError("metadata", f"is {len(data)} bytes as JSON; at most {MAX_METADATA_BYTES}", index)
        if metadata:
            fields[b"m"] = data
    return fields


def _utf8(text: str, field: str, index: int | None) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise EventError(field, "must be valid UTF-8 text (it has a lone surrogate)", index) from None


def record_event(*, news_id: int, event_type: str, user_id: int | str | None = None,
                 metadata: dict | None = None) -> str:
    """Validate one event and append it to the buffer. Returns its stream id
    ("<ms>-<seq>"). Raises EventError (naming the field) before anything is written, and
    redis.RedisError if Redis cannot be reached."""
    fields = validate_event(news_id, event_type, user_id, metadata)
    if not _length_check_due(1) and not settings.ANALYTICS_WAIT_REPLICAS:
        return get_redis().xadd(STREAM_KEY, fields).decode()
    ids, length = append_entries([fields])
    _after_length_check(length)
    return ids[0].decode()


def record_events(events: list[dict]) -> int:
    """Validate a list of events (dicts with news_id, event_type and optional user_id and
    metadata) and append them all in one round trip. All or nothing: one invalid event
    raises EventError naming its index and field, and nothing is written. Returns the
    number of events accepted."""
    if not isinstance(events, list):
        raise EventError("events", f"must be a list of events, got {type(events).__name__}")
    if len(events) > MAX_EVENTS_PER_CALL:
        raise EventError("events", f"at most {MAX_EVENTS_PER_CALL} per call, got {len(events)}")
    entries = [_fields_of(event, i) for i, event in enumerate(events)]
    if not entries:
        return 0
    _, length = append_entries(entries)
    _after_length_check(length)
    return len(entries)


def _fields_of(event: Any, index: int) -> dict:
    if not isinstance(event, dict):
        raise EventError("event", f"must be a JSON object, got {type(event).__name__}", index)
    for name in event:
        if name not in EVENT_FIELDS:
            raise EventError(str(name), f"unknown field; known: {', '.join(EVENT_FIELDS)}", index)
    for name in ("news_id", "event_type"):
        if name not in event:
            raise EventError(name, "is required", index)
    return validate_event(event["news_id"], event["event_type"], event.get("user_id"), event.get("metadata"),
                          index=index)


# ---------------------------------------------------------------- replication (issue 14)


class NotReplicated(redis.RedisError):
    """The events are on the master but fewer replicas than ANALYTICS_WAIT_REPLICAS confirmed
    them in time: a failover now would lose them. The caller should retry (at least once:
    if they survive, a retry counts them twice)."""


def append_entries(entries: list[dict]) -> tuple[list[bytes], int]:
    """XADD every entry and read XLEN in one round trip, all or nothing: inside MULTI/EXEC, so
    a Redis that refuses one write (full under noeviction: OOM) writes none of them, and a
    refused batch can be retried without counting part of it twice. With
    ANALYTICS_WAIT_REPLICAS > 0, WAIT follows on the same connection (WAIT counts this
    connection's writes) and NotReplicated is raised if fewer replicas confirmed in time.
    Without it, an acknowledged event that had not reached a replica when the master died is
    lost in the failover, silently. Returns (entry ids, stream length)."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.execute_command("MULTI")
    for fields in entries:
        pipe.execute_command("XADD", STREAM_KEY, "*", *itertools.chain.from_iterable(fields.items()))
    pipe.execute_command("XLEN", STREAM_KEY)
    pipe.execute_command("EXEC")
    wanted = settings.ANALYTICS_WAIT_REPLICAS
    if wanted:
        pipe.execute_command("WAIT", wanted, settings.ANALYTICS_WAIT_TIMEOUT_MS)
    results = pipe.execute(raise_on_error=False)
    # [OK, QUEUED..., EXEC's list or its abort, (WAIT)]: a refused XADD is the real reason.
    for reply in results:
        if isinstance(reply, Exception) and not isinstance(reply, redis.exceptions.ExecAbortError):
            raise reply
    exec_reply = results[len(entries) + 2]
    if isinstance(exec_reply, Exception):
        raise exec_reply
    if wanted and int(results[-1]) < wanted:
        raise NotReplicated(f"{len(entries)} event(s) written but confirmed by {results[-1]} of {wanted} replica(s) "
                            f"within {settings.ANALYTICS_WAIT_TIMEOUT_MS} ms (ANALYTICS_WAIT_REPLICAS)")
    return exec_reply[:-1], int(exec_reply[-1])


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
