"""The database's clock, for deciding what is due.

Several qcluster hosts run dispatchers; if each compared run_at with its own clock, a host
whose clock runs ahead by S seconds would start jobs S seconds early. Every dispatcher reads
"now" as the database server's clock instead: the offset between this host and the database
is measured (the best of three SELECTs) at start and every OFFSET_REFRESH_SECONDS, so a job
becomes due at the same instant whichever host looks. Remaining error: one round trip to
the database plus the drift between two measurements (milliseconds)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone as dt_timezone

from django.db import connection
from django.utils import timezone

logger = logging.getLogger(__name__)

OFFSET_REFRESH_SECONDS = 30.0
# Logged when this host's clock differs from the database's by more than this.
SKEW_WARNING_SECONDS = 1.0

_lock = threading.Lock()
_offset = timedelta(0)
_next_measure = 0.0  # time.monotonic(): immune to the wall clock being stepped


def now() -> datetime:
    """The current time by the database's clock (aware, UTC)."""
    global _next_measure
    if time.monotonic() >= _next_measure:
        with _lock:
            if time.monotonic() >= _next_measure:
                _measure()
                _next_measure = time.monotonic() + OFFSET_REFRESH_SECONDS
    return timezone.now() + _offset


def offset() -> timedelta:
    """Database clock minus this host's clock, as last measured."""
    return _offset


def _measure() -> None:
    global _offset
    if connection.vendor != "mysql":
        return  # SQLite (embedded mode) is on this host: same clock
    # Three samples, keep the one with the shortest round trip (a loaded host can stall between
    # the SELECT and reading its answer). The true offset lies in [db - after, db - before]:
    # when that interval holds 0 the clocks agree as far as can be told and nothing is
    # corrected (no jitter of tens of ms on a busy machine); otherwise the bound nearest 0.
    best = None
    with connection.cursor() as cursor:
        for _ in range(3):
            before = timezone.now()
            cursor.execute("SELECT UTC_TIMESTAMP(6)")
            db_now = cursor.fetchone()[0].replace(tzinfo=dt_timezone.utc)
            after = timezone.now()
            if best is None or after - before < best[1] - best[0]:
                best = (before, after, db_now)
    before, after, db_now = best
    low, high = db_now - after, db_now - before
    new = timedelta(0) if low <= timedelta(0) <= high else (low if low > timedelta(0) else high)
    if abs(new.total_seconds()) > SKEW_WARNING_SECONDS and abs((new - _offset).total_seconds()) > 0.5:
        logger.warning("clock: this host's clock is %+.3f s off the database's; due jobs are timed by the "
                       "database's clock (fix NTP on this host)", -new.total_seconds())
    _offset = new


def reset() -> None:
    """Measure again on the next call (tests; after a fork)."""
    global _next_measure
    _next_measure = 0.0
