"""The analytics batch: drain the Redis Stream buffer (analytics/ingest.py) into counters.

Nothing lost, nothing counted twice:
- The buffer is read through a consumer group, so what a batch has read stays in the
  group's pending list until it is acknowledged.
- Each chunk is applied in ONE transaction that upserts the daily counters, adds to the
  news item's running totals, records unique users and the raw events, and records which
  entries it applied (AppliedBatch). XACK and XDEL come only after the commit.
- A batch killed before its commit leaves its entries pending; once they have been idle
  ANALYTICS_CLAIM_IDLE_SECONDS the next run takes them over (XAUTOCLAIM) and counts them.
- A batch killed after its commit but before XACK leaves entries that were already
  counted: the next run finds them in AppliedBatch and only acknowledges them.
- Chunk transactions apply one at a time (a row lock, ApplyLock), and the replay check
  runs under that lock, so it sees every earlier commit; two batches running at once (or
  one taking over a live one's entries) cannot both count an entry.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import socket
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import redis
from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from analytics import buffer
from analytics.buffer import buffer_redis
from analytics.ingest import EVENT_TYPES, STREAM_KEY, enqueue_threshold_batch
from analytics.models import AppliedBatch, ApplyLock, DailyStat, DailyUser, QuarantinedEvent, RawEvent
from analytics.quarantine import is_entry_error, quarantine_rows
from analytics.validation import EventError, entry_fields
from jobs.maintenance import delete_in_batches
from news.models import News

logger = logging.getLogger(__name__)

GROUP = "analytics-batch"
LOCK_NAME = "apply"
# Consumers are named per run; a crashed run's consumer is removed once its entries have
# been taken over and it has been silent this long.
STALE_CONSUMER_MS = 3600 * 1000
# MariaDB deadlock (1213) and lock wait timeout (1205): the chunk's transaction was rolled
# back whole, so it is safe to run again.
RETRYABLE_DB_ERRORS = {1205, 1213}
CHUNK_ATTEMPTS = 3
NEWS_UPDATE_BATCH = 500


@dataclass
class Entry:
    entry_id: str
    key: str  # sortable form of entry_id
    ms: int
    news_id: int | None  # None: the entry is not a valid event
    event_type: str = ""
    user_id: bytes = b""  # UTF-8, as stored in the stream
    metadata: bytes | None = None  # a JSON object, UTF-8
    fields: dict | None = None  # as read, for the quarantine
    error: str = ""  # why it is not a valid event


@dataclass
class Tally:
    chunks: int = 0
    events: int = 0
    counted: int = 0
    dropped_unknown_news: int = 0
    dropped_invalid: int = 0
    replayed: int = 0
    taken_over: int = 0
    unknown_news_ids: set[int] = field(default_factory=set)

    def add(self, other: Tally) -> None:
        for name in ("chunks", "events", "counted", "dropped_unknown_news", "dropped_invalid", "replayed",
                     "taken_over"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unknown_news_ids |= other.unknown_news_ids


def sort_key(entry_id: str) -> str:
    """A stream id ("1712345678901-7") as a string that sorts like the id."""
    ms, _, seq = entry_id.partition("-")
    return f"{int(ms):015d}-{int(seq or 0):010d}"


# ---------------------------------------------------------------- the batch


def analytics_process_batch(*, reason: str = "manual", max_events: int | None = None,
                            max_seconds: float | None = None, chunk_size: int | None = None) -> str:
    """Count buffered events into the database, chunk by chunk, until the buffer is empty
    or ANALYTICS_BATCH_MAX_EVENTS / ANALYTICS_BATCH_MAX_SECONDS is reached (then the next
    run is enqueued). Entries of dead batches are taken over first. Returns a summary."""
    max_events = max_events or settings.ANALYTICS_BATCH_MAX_EVENTS
    max_seconds = max_seconds or settings.ANALYTICS_BATCH_MAX_SECONDS
    chunk_size = chunk_size or settings.ANALYTICS_BATCH_CHUNK
    client = buffer_redis()
    ensure_group(client)
    consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    total = Tally()
    cursor = "0-0"
    claiming = True
    limited = False
    try:
        while True:
            if total.events >= max_events or time.monotonic() - started >= max_seconds:
                limited = True
                break
            count = min(chunk_size, max_events - total.events)
            if claiming:
                cursor, entries = _take_over_idle(client, consumer, cursor, count)
                claiming = cursor != "0-0"
                if not entries:
                    continue
                tally = apply_isolating(entries, fresh_read=False, reason=reason, consumer=consumer)
                tally.taken_over = len(entries)
            else:
                entries = _read_new(client, consumer, count)
                if not entries:
                    break
                tally = apply_isolating(entries, fresh_read=True, reason=reason, consumer=consumer)
            _ack(client, entries)
            total.add(tally)
    finally:
        _forget_consumers(client, consumer)
    if total.unknown_news_ids:
        logger.warning("analytics: dropped %d event(s) for news items that do not exist: ids %s",
                       total.dropped_unknown_news, sorted(total.unknown_news_ids)[:50])
    backlog = client.xlen(STREAM_KEY)
    summary = (f"{total.events} events in {total.chunks} chunk(s) in {time.monotonic() - started:.2f} s: "
               f"{total.counted} counted, {total.dropped_unknown_news} dropped (unknown news), "
               f"{total.dropped_invalid} quarantined, {total.replayed} already counted, "
               f"{total.taken_over} taken over; buffer now {backlog}")
    if limited and backlog:
        enqueue_threshold_batch(backlog, reason="continue")
        summary += "; next run enqueued"
    logger.info("analytics batch (%s): %s", reason, summary)
    return summary


def ensure_group(client: redis.Redis) -> None:
    try:
        # From id 0: events appended before the group existed are read too.
        client.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def buffer_status() -> dict:
    """Length of the buffer and entries read but not yet acknowledged (for admin/ops)."""
    client = buffer_redis()
    length = client.xlen(STREAM_KEY)
    try:
        pending = client.xpending(STREAM_KEY, GROUP)["pending"]
    except redis.ResponseError:  # no stream or group yet
        pending = 0
    return {"length": length, "pending": pending}


def _read_new(client: redis.Redis, consumer: str, count: int) -> list[Entry]:
    reply = client.xreadgroup(GROUP, consumer, {STREAM_KEY: ">"}, count=count)
    if not reply:
        return []
    return [_parse(entry_id, fields) for entry_id, fields in reply[0][1]]


def _take_over_idle(client: redis.Redis, consumer: str, cursor: str, count: int) -> tuple[str, list[Entry]]:
    """Entries other batches read and left unacknowledged for ANALYTICS_CLAIM_IDLE_SECONDS."""
    min_idle = int(settings.ANALYTICS_CLAIM_IDLE_SECONDS * 1000)
    reply = client.xautoclaim(STREAM_KEY, GROUP, consumer, min_idle, start_id=cursor, count=count)
    next_cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    entries = [_parse(entry_id, fields) for entry_id, fields in reply[1] if entry_id is not None]
    if entries:
        logger.warning("analytics: taking over %d event(s) left unacknowledged by a dead or stalled batch "
                       "(%s .. %s)", len(entries), entries[0].entry_id, entries[-1].entry_id)
    return ("0-0" if next_cursor in ("0-0", "0") else next_cursor), entries


def _parse(entry_id: bytes | str, fields: dict | None) -> Entry:
    """An entry as written by analytics.ingest, checked as ingest checks an event
    (analytics/validation.py); anything else (written by hand, or by an older version) is
    marked with its error and quarantined rather than failing the whole chunk in SQL."""
    entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms = int(entry_id.partition("-")[0])
    entry = Entry(entry_id=entry_id, key=sort_key(entry_id), ms=ms, news_id=None, fields=fields)
    try:
        entry.news_id, entry.event_type, entry.user_id, entry.metadata = entry_fields(fields)
    except EventError as exc:
        entry.news_id, entry.error = None, str(exc)
    return entry


def _ack(client: redis.Redis, entries: list[Entry]) -> None:
    # One script: the buffer's byte budget (analytics/buffer.py) goes down with the deletion.
    buffer.acknowledge(client, STREAM_KEY, GROUP, [(e.entry_id, e.fields) for e in entries])


def _forget_consumers(client: redis.Redis, mine: str) -> None:
    """Remove this run's consumer, and crashed runs' consumers whose entries were taken
    over. A consumer is removed only with nothing pending: deleting it would orphan those."""
    try:
        for info in client.xinfo_consumers(STREAM_KEY, GROUP):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if info["pending"] == 0 and (name == mine or info["idle"] > STALE_CONSUMER_MS):
                client.xgroup_delconsumer(STREAM_KEY, GROUP, name)
    except redis.RedisError:
        logger.exception("analytics: could not tidy the consumer group")


# ---------------------------------------------------------------- one chunk


def apply_isolating(entries: list[Entry], *, fresh_read: bool, reason: str, consumer: str) -> Tally:
    """Apply a chunk. If the database refuses it because of what an entry holds (see
    analytics.quarantine.is_entry_error), split it in halves and apply each, down to single
    entries, which are quarantined with the error: one bad entry costs about 2·log2(chunk)
    extra transactions and stops nothing. Every other entry is counted exactly once: each
    part is its own transaction with its own AppliedBatch record, and a failed part was
    rolled back whole. Other failures (the database down) propagate, entries stay pending."""
    total = Tally()
    # Depth-first over an explicit stack, first half first: at most 2·len(entries) parts.
    parts: list[tuple[list[Entry], bool]] = [(entries, fresh_read)]
    while parts:
        part, whole_read = parts.pop()
        try:
            total.add(_apply_with_retries(part, fresh_read=whole_read, reason=reason, consumer=consumer))
            continue
        except Exception as exc:
            if not is_entry_error(exc):
                raise
            failure = exc
        if len(part) == 1:
            total.add(_quarantine_refused(part[0], failure, reason=reason, consumer=consumer))
            continue
        logger.warning("analytics: a chunk of %d entries (%s .. %s) was refused (%s: %s); splitting it to find "
                       "the entries at fault", len(part), part[0].entry_id, part[-1].entry_id,
                       type(failure).__name__, str(failure)[:300])
        middle = len(part) // 2
        # Parts record their entries one by one (fresh_read=False): a half's range is
        # contiguous too, but listing is cheap here and needs no reasoning about gaps.
        parts += [(part[middle:], False), (part[:middle], False)]
    return total


def _quarantine_refused(entry: Entry, failure: BaseException, *, reason: str, consumer: str) -> Tally:
    """One entry the database refused: quarantined and recorded as applied in one
    transaction, so a replay neither counts nor quarantines it twice."""
    started = time.monotonic()
    tally = Tally(chunks=1, events=1)
    with transaction.atomic():
        _lock_apply(consumer)
        if _already_applied([entry]):
            tally.replayed = 1
            return tally
        tally.dropped_invalid = quarantine_rows([entry], stage="database", consumer=consumer,
                                                errors={entry.entry_id: f"{type(failure).__name__}: {failure}"})
        _record_applied([entry], whole_range=False, reason=reason, consumer=consumer, tally=tally,
                        took_ms=int((time.monotonic() - started) * 1000))
    logger.error("analytics: entry %s quarantined, the database refused it: %s", entry.entry_id,
                 str(failure)[:300])
    return tally


def _apply_with_retries(entries: list[Entry], *, fresh_read: bool, reason: str, consumer: str) -> Tally:
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        try:
            return apply_chunk(entries, fresh_read=fresh_read, reason=reason, consumer=consumer)
        except OperationalError as exc:
            code = exc.args[0] if exc.args else None
            if code not in RETRYABLE_DB_ERRORS or attempt == CHUNK_ATTEMPTS:
                raise
            logger.warning("analytics: chunk rolled back (%s), attempt %d of %d", exc, attempt, CHUNK_ATTEMPTS)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def apply_chunk(entries: list[Entry], *, fresh_read: bool, reason: str, consumer: str) -> Tally:
    """Apply one chunk of buffer entries in one transaction. `fresh_read`: the entries are
    one XREADGROUP > reply, i.e. every entry between the first and the last id."""
    started = time.monotonic()
    tally = Tally(chunks=1, events=len(entries))
    with transaction.atomic():
        _lock_apply(consumer)
        applied = _already_applied(entries)
        fresh = [e for e in entries if e.key not in applied]
        tally.replayed = len(entries) - len(fresh)
        if not fresh:
            return tally
        valid = [e for e in fresh if e.news_id is not None]
        invalid = [e for e in fresh if e.news_id is None]
        if invalid:
            tally.dropped_invalid = quarantine_rows(invalid, stage="check", consumer=consumer)
            logger.warning("analytics: %d entr(ies) that are not valid events quarantined, e.g. %s: %s",
                           len(invalid), invalid[0].entry_id, invalid[0].error[:200])
        wanted = {e.news_id for e in valid}
        # Locked (in id order, as the totals UPDATE will): an item cannot be deleted between
        # this check and the counters' insert, which would fail the chunk on its foreign key.
        existing = set(News.objects.select_for_update().filter(pk__in=wanted).order_by("pk")
                       .values_list("pk", flat=True)) if wanted else set()
        counted = [e for e in valid if e.news_id in existing]
        tally.counted = len(counted)
        tally.dropped_unknown_news = len(valid) - len(counted)
        tally.unknown_news_ids = wanted - existing
        if counted:
            _write_counters(counted)
        whole_range = fresh_read and len(fresh) == len(entries)
        _record_applied(fresh, whole_range=whole_range, reason=reason, consumer=consumer, tally=tally,
                        took_ms=int((time.monotonic() - started) * 1000))
    return tally


class ApplyLockBusy(Exception):
    """Another batch's transaction holds the apply lock past APPLY_LOCK_WAIT_S: a batch that
    is slow, or whose host froze mid-chunk (a paused VM keeps its connection, and with it the
    lock, for as long as it is paused). Not an error of this batch: it waits and tries again."""


# Seconds a chunk waits for the apply lock before giving way: well inside the engine's read
# timeout (JOBS_DB_TIMEOUT), which would otherwise end the wait as a lost connection and spend
# the job's retries on somebody else's transaction.
APPLY_LOCK_WAIT_S = 2
BUSY_RETRY_AFTER = timedelta(seconds=10)


def _lock_apply(consumer: str) -> None:
    now = timezone.now()
    if connection.vendor == "mysql":
        wait = max(0, min(APPLY_LOCK_WAIT_S, settings.JOBS_DB_TIMEOUT - 1))
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT id FROM {_table(ApplyLock)} WHERE name = %s FOR UPDATE "
                               + (f"WAIT {wait}" if wait else "NOWAIT"), [LOCK_NAME])
        except OperationalError as exc:
            if exc.args and exc.args[0] == 1205:  # lock wait timeout (WAIT n and NOWAIT alike)
                raise ApplyLockBusy(f"another batch holds the analytics apply lock (last taken by "
                                    f"{_last_holder()}); counting again later") from None
            raise
    if ApplyLock.objects.filter(name=LOCK_NAME).update(held_by=consumer[:191], acquired_at=now):
        return
    try:
        with transaction.atomic():
            ApplyLock.objects.create(name=LOCK_NAME, held_by=consumer[:191], acquired_at=now)
    except IntegrityError:  # created meanwhile by another batch: wait for its lock
        ApplyLock.objects.filter(name=LOCK_NAME).update(held_by=consumer[:191], acquired_at=now)


def _last_holder() -> str:
    # The holder's own row update is not committed yet: this is the last committed holder.
    row = ApplyLock.objects.filter(name=LOCK_NAME).values_list("held_by", "acquired_at").first()
    if not row or not row[0]:
        return "nobody yet"
    return f"{row[0]} at {row[1]:%Y-%m-%d %H:%M:%S}" if row[1] else row[0]


def _already_applied(entries: list[Entry]) -> set[str]:
    keys = sorted(e.key for e in entries)
    rows = AppliedBatch.objects.filter(last_key__gte=keys[0], first_key__lte=keys[-1]).values_list(
        "first_key", "last_key", "entry_keys")
    applied: set[str] = set()
    for first, last, listed in rows:
        if listed:
            applied.update(set(listed.split()) & set(keys))
        else:
            applied.update(keys[bisect.bisect_left(keys, first):bisect.bisect_right(keys, last)])
    return applied


def _record_applied(fresh: list[Entry], *, whole_range: bool, reason: str, consumer: str, tally: Tally,
                    took_ms: int) -> None:
    keys = sorted(e.key for e in fresh)
    AppliedBatch.objects.create(
        first_key=keys[0], last_key=keys[-1], entry_keys="" if whole_range else " ".join(keys),
        reason=reason[:32], consumer=consumer[:191], events=tally.events, counted=tally.counted,
        dropped_unknown_news=tally.dropped_unknown_news, dropped_invalid=tally.dropped_invalid,
        took_ms=took_ms)


@functools.lru_cache(maxsize=4096)
def _day_of_minute(minute: int, tz_name: str) -> date:
    # Day boundaries fall on whole minutes in every time zone.
    return datetime.fromtimestamp(minute * 60, tz=ZoneInfo(tz_name)).date()


def day_of(ms: int) -> date:
    return _day_of_minute(ms // 60000, settings.TIME_ZONE)


def _utc_text(ms: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(milliseconds=ms)).isoformat(sep=" ", timespec="microseconds")


def _write_counters(events: list[Entry]) -> None:
    tz_name = settings.TIME_ZONE
    daily: Counter = Counter()
    totals: dict[int, Counter] = defaultdict(Counter)
    users: set[tuple[int, str, bytes]] = set()
    raw: list[tuple[Entry, str]] = []
    times: dict[int, str] = {}
    for e in events:
        day = _day_of_minute(e.ms // 60000, tz_name).isoformat()
        daily[(e.news_id, day, e.event_type)] += 1
        total_field = EVENT_TYPES[e.event_type]
        if total_field:
            totals[e.news_id][total_field] += 1
        if e.user_id:
            users.add((e.news_id, day, e.user_id))
        at = times.get(e.ms)
        if at is None:
            at = times[e.ms] = _utc_text(e.ms)
        raw.append((e, at))
    # Sorted, so that concurrent writers (a person saving a news item) lock rows in one order.
    daily_rows = sorted(daily.items())
    user_rows = sorted(users)
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            _write_mysql(cursor, daily_rows, user_rows, raw)
        else:
            _write_portable(cursor, daily_rows, user_rows, raw)
        ids = sorted(totals)
        for start in range(0, len(ids), NEWS_UPDATE_BATCH):
            cursor.execute(*_add_totals_sql(ids[start:start + NEWS_UPDATE_BATCH], totals))


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


# Multi-row statements are cut at this size, well under max_allowed_packet (16 MB default).
MAX_STATEMENT_BYTES = 1024 * 1024


def _write_mysql(cursor, daily_rows, user_rows, raw) -> None:
    """Multi-row statements built here: the driver's per-value quoting was half of the
    chunk's time. Only user ids and metadata come from clients, and they go through the
    connection's own escaping (mysql_real_escape_string); every other value is an int, a
    date or an event type the batch itself produced or checked."""
    escape = connection.connection.escape_string
    _insert_values(cursor, f"INSERT INTO {_table(DailyStat)} (news_id, day, event_type, count) VALUES ",
                   (b"(%d,'%s','%s',%d)" % (n, d.encode(), t.encode(), c) for (n, d, t), c in daily_rows),
                   " ON DUPLICATE KEY UPDATE count = count + VALUES(count)")
    _insert_values(cursor, f"INSERT IGNORE INTO {_table(DailyUser)} (news_id, day, user_id) VALUES ",
                   (b"(%d,'%s','%s')" % (n, d.encode(), escape(u)) for n, d, u in user_rows))
    _insert_values(
        cursor, f"INSERT INTO {_table(RawEvent)} (news_id, event_type, user_id, metadata, occurred_at, stream_id) VALUES ",
        (b"(%d,'%s','%s',%s,'%s','%s')" % (
            e.news_id, e.event_type.encode(), escape(e.user_id),
            b"'" + escape(e.metadata) + b"'" if e.metadata else b"NULL", at.encode(), e.entry_id.encode())
         for e, at in raw))


def _insert_values(cursor, head: str, rows, tail: str = "") -> None:
    head_b, tail_b = head.encode(), tail.encode()
    batch: list[bytes] = []
    size = 0
    for row in rows:
        batch.append(row)
        size += len(row) + 1
        if size >= MAX_STATEMENT_BYTES:
            cursor.execute(head_b + b",".join(batch) + tail_b)
            batch, size = [], 0
    if batch:
        cursor.execute(head_b + b",".join(batch) + tail_b)


def _write_portable(cursor, daily_rows, user_rows, raw) -> None:
    """SQLite (the embedded demo mode): the same rows through the driver's parameters."""
    cursor.executemany(
        f"INSERT INTO {_table(DailyStat)} (news_id, day, event_type, count) VALUES (%s, %s, %s, %s) "
        f"ON CONFLICT (news_id, day, event_type) DO UPDATE SET count = count + excluded.count",
        [(n, d, t, c) for (n, d, t), c in daily_rows])
    cursor.executemany(f"INSERT OR IGNORE INTO {_table(DailyUser)} (news_id, day, user_id) VALUES (%s, %s, %s)",
                       [(n, d, u.decode()) for n, d, u in user_rows])
    cursor.executemany(
        f"INSERT INTO {_table(RawEvent)} (news_id, event_type, user_id, metadata, occurred_at, stream_id) "
        f"VALUES (%s, %s, %s, %s, %s, %s)",
        [(e.news_id, e.event_type, e.user_id.decode(), e.metadata.decode() if e.metadata else None, at, e.entry_id)
         for e, at in raw])


def _add_totals_sql(ids: list[int], totals: dict[int, Counter]) -> tuple[str, list]:
    sets, params = [], []
    for name in sorted({f for f in EVENT_TYPES.values() if f}):
        arms = [(i, totals[i][name]) for i in ids if totals[i][name]]
        if not arms:
            continue
        sets.append(f"{name} = {name} + CASE id " + " ".join(["WHEN %s THEN %s"] * len(arms)) + " ELSE 0 END")
        params += [x for arm in arms for x in arm]
    placeholders = ", ".join(["%s"] * len(ids))
    return f"UPDATE {_table(News)} SET {', '.join(sets)} WHERE id IN ({placeholders})", params + ids


# ---------------------------------------------------------------- retention


RAW_DELETE_BATCH = 5000
RAW_DELETE_MAX_BATCHES = 200


def analytics_cleanup(*, now: datetime | None = None) -> int:
    """Delete raw events (and applied-batch records and quarantined entries) older than
    ANALYTICS_RAW_RETENTION_DAYS, in short transactions of RAW_DELETE_BATCH rows, at most
    RAW_DELETE_MAX_BATCHES per run. Counters and unique users are kept. Returns the raw events deleted."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.ANALYTICS_RAW_RETENTION_DAYS)
    deleted = delete_in_batches(RawEvent.objects.filter(occurred_at__lt=cutoff), batch=RAW_DELETE_BATCH,
                                max_batches=RAW_DELETE_MAX_BATCHES)
    batches = delete_in_batches(AppliedBatch.objects.filter(applied_at__lt=cutoff))
    quarantined = delete_in_batches(QuarantinedEvent.objects.filter(quarantined_at__lt=cutoff))
    logger.info("analytics cleanup: %d raw event(s), %d batch record(s) and %d quarantined entr(ies) older than %s "
                "deleted", deleted, batches, quarantined, cutoff.isoformat())
    return deleted
