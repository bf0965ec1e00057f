"""Finished jobs rolled up per minute, so that history, "today", "last hour" and /metrics
cost the same on a ledger of ten million rows as on an empty one.

Writing: `roll_up()` (run by the 30-second health check, jobs/health.py) aggregates the jobs
that finished (completed or dead) in closed minutes from the (state, finished_at) index into
JobStat rows by minute, queue, job type and state, and advances the JobStatMark `through`
in the same transaction. A minute is rolled once it ended GRACE ago (so the transactions
that finished jobs in it have committed); each pass is bounded (CHUNK of ledger time per
transaction, PASS_BUDGET_S per pass) and the mark's row lock keeps two passes (two
workers running the check at once) from counting a minute twice. A pass that comes late (the
cluster was down) catches up from the mark, chunk by chunk; history older than HISTORY is
neither rolled nor kept.

Reading: `totals()` and `hourly_counts()` add up three parts that never overlap: the ledger
from the window's start to its first whole minute, JobStat rows from there to the mark, and
the ledger from the mark to now (a few minutes, since the mark trails now by GRACE to
GRACE + 30 s). Before any pass has run they read the ledger alone: the same numbers, only
slower. A job counts in the minute it finished, with the state it had then: a dead job
retried later stays counted as a failure of that minute (the ledger no longer shows it as
dead), and one that completes after the retry counts again, as completed, in its minute."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import (Count, DateTimeField, DurationField, ExpressionWrapper, F, Func, IntegerField, Q,
                              Sum, Value)
from django.utils import timezone

from jobs.models import Job, JobStat, JobStatMark, JobState

logger = logging.getLogger(__name__)

# Expired jobs never ran (no duration or lateness) but are counted, per minute, like the others.
FINISHED_COUNTED = (JobState.COMPLETED, JobState.DEAD, JobState.EXPIRED)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900)
GRACE = timedelta(seconds=90)  # finished_at is set in a short transaction; 90 s is ample
HISTORY = timedelta(days=8)  # the dashboard's 7 days plus a margin for time zones
CHUNK = timedelta(minutes=60)  # about 60,000 ledger rows per transaction at 1.5 M jobs a day
PASS_BUDGET_S = 5.0  # a late pass stops after this and the next one goes on
PRUNE_BATCH = 5000
MARK = "finished"
MINUTE = timedelta(minutes=1)


def floor_minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def ceil_minute(value: datetime) -> datetime:
    floor = floor_minute(value)
    return floor if floor == value else floor + MINUTE


class UnitsSince(Func):
    """Whole minutes or hours from `origin` (a fixed moment) to a datetime column, computed
    in SQL, so rows can be grouped by minute or hour without the database's time zone tables."""

    output_field = IntegerField()

    def __init__(self, unit: str, origin: datetime, expression):
        assert unit in ("MINUTE", "HOUR")
        self.unit = unit
        super().__init__(Value(origin, output_field=DateTimeField()), expression)

    def as_mysql(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template=f"TIMESTAMPDIFF({self.unit}, %(expressions)s)", **extra)

    def as_sqlite(self, compiler, connection, **extra):
        # julianday(origin) - julianday(value) is minus the days elapsed.
        per_day = 1440 if self.unit == "MINUTE" else 24
        return self.as_sql(compiler, connection, arg_joiner=") - julianday(",
                           template=f"CAST((julianday(%(expressions)s)) * -{per_day} AS INTEGER)", **extra)


@dataclass
class Totals:
    """Jobs finished in a window for one (queue, job type, state)."""

    count: int = 0
    timed: int = 0  # of which with a started_at: what the sums and histograms cover
    duration_sum: float = 0.0
    lateness_sum: float = 0.0
    duration_buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    lateness_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENESS_BUCKETS))

    def add(self, count=0, timed=0, duration_sum=0.0, lateness_sum=0.0, duration_buckets=(), lateness_buckets=()):
        self.count += count
        self.timed += timed
        self.duration_sum += duration_sum or 0.0
        self.lateness_sum += lateness_sum or 0.0
        # A row rolled up under other bucket bounds (they changed since) only adds its count.
        if len(duration_buckets) == len(self.duration_buckets):
            self.duration_buckets = [a + b for a, b in zip(self.duration_buckets, duration_buckets)]
        if len(lateness_buckets) == len(self.lateness_buckets):
            self.lateness_buckets = [a + b for a, b in zip(self.lateness_buckets, lateness_buckets)]


Key = tuple[str, str, str]  # (queue, job_type, state)


def _seconds(value) -> float:
    return value.total_seconds() if value is not None else 0.0


def _finished(since: datetime, until: datetime | None):
    qs = Job.objects.filter(state__in=FINISHED_COUNTED, finished_at__gte=since)
    return qs.filter(finished_at__lt=until) if until is not None else qs


def _ledger_aggregates(histograms: bool) -> dict:
    aggs = {"n": Count("pk"), "timed": Count("pk", filter=Q(started_at__isnull=False))}
    if histograms:
        aggs.update(d_sum=Sum("d"), l_sum=Sum("l"))
        for i, bound in enumerate(DURATION_BUCKETS):
            aggs[f"d{i}"] = Count("pk", filter=Q(d__lte=timedelta(seconds=bound)))
        for i, bound in enumerate(LATENESS_BUCKETS):
            aggs[f"l{i}"] = Count("pk", filter=Q(l__lte=timedelta(seconds=bound)))
    return aggs


def _with_timings(qs):
    return qs.alias(d=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField()),
                    l=ExpressionWrapper(F("started_at") - F("run_at"), output_field=DurationField()))


def _ledger_row_totals(row: dict, histograms: bool) -> dict:
    values = {"count": row["n"], "timed": row["timed"]}
    if histograms:
        values.update(duration_sum=_seconds(row["d_sum"]), lateness_sum=_seconds(row["l_sum"]),
                      duration_buckets=[row[f"d{i}"] for i in range(len(DURATION_BUCKETS))],
                      lateness_buckets=[row[f"l{i}"] for i in range(len(LATENESS_BUCKETS))])
    return values


# ---------------------------------------------------------------- writing


def _roll_chunk(start: datetime, end: datetime) -> int:
    """JobStat rows for the whole minutes in [start, end); returns how many rows."""
    rows = (_with_timings(_finished(start, end))
            .annotate(minute_index=UnitsSince("MINUTE", start, F("finished_at")))
            .values("minute_index", "queue", "job_type", "state").order_by()
            .annotate(**_ledger_aggregates(histograms=True)))
    stats = [JobStat(minute=start + timedelta(minutes=row["minute_index"]), queue=row["queue"],
                     job_type=row["job_type"], state=row["state"], **_ledger_row_totals(row, True))
             for row in rows]
    # A minute is whole in one chunk, so writing it again (a mark moved back by hand) replaces
    # its rows with the same counts instead of adding to them.
    # (ON DUPLICATE KEY UPDATE on MariaDB: the unique key is (minute, queue, job_type, state).)
    JobStat.objects.bulk_create(stats, update_conflicts=True,
                                update_fields=["count", "timed", "duration_sum", "lateness_sum", "duration_buckets",
                                               "lateness_buckets"])
    return len(stats)


def _next_finished_minute(since: datetime) -> datetime:
    """The minute of the first job finished at or after `since` (one index probe per
    state), or far in the future if none: where there is something to roll."""
    firsts = [Job.objects.filter(state=state, finished_at__gte=since).order_by("finished_at")
              .values_list("finished_at", flat=True).first() for state in FINISHED_COUNTED]
    found = [floor_minute(f) for f in firsts if f is not None]
    return max(min(found), since) if found else datetime.max.replace(tzinfo=since.tzinfo)


def roll_up(now: datetime | None = None, *, budget_s: float = PASS_BUDGET_S) -> dict:
    """One bounded pass: roll the closed minutes since the mark into JobStat, one CHUNK per
    transaction, until caught up or `budget_s` has passed; then prune rows older than HISTORY."""
    now = now or timezone.now()
    limit = floor_minute(now - GRACE)
    floor = floor_minute(now - HISTORY)
    JobStatMark.objects.get_or_create(name=MARK, defaults={"through": floor})
    deadline = time.monotonic() + budget_s
    minutes = chunks = 0
    through = None
    while True:
        with transaction.atomic():
            mark = JobStatMark.objects.select_for_update().get(name=MARK)
            first = max(mark.through, floor)  # a mark older than the history skips the gap
            through = mark.through
            if first >= limit:
                break
            start = min(_next_finished_minute(first), limit)  # skip a stretch with nothing finished
            end = min(start + CHUNK, limit)
            if end > start:
                _roll_chunk(start, end)
            mark.through = through = end
            mark.save(update_fields=["through", "updated_at"])
        minutes += int((end - first) / MINUTE)
        chunks += 1
        if time.monotonic() >= deadline:
            break
    old = list(JobStat.objects.filter(minute__lt=floor).values_list("pk", flat=True)[:PRUNE_BATCH])
    if old:
        JobStat.objects.filter(pk__in=old).delete()
    return {"minutes": minutes, "chunks": chunks, "through": through.isoformat() if through else None,
            "lag_s": round((now - through).total_seconds(), 1) if through else None, "pruned": len(old)}


def catch_up(now: datetime | None = None) -> tuple[int, int]:
    """Passes until the mark is within GRACE of now (after a first deploy on a large ledger,
    or in a benchmark); returns (passes, minutes rolled)."""
    passes = minutes = 0
    while True:
        result = roll_up(now)
        passes += 1
        minutes += result["minutes"]
        if result["chunks"] == 0 or result["minutes"] == 0:
            return passes, minutes


# ---------------------------------------------------------------- reading


def mark_through() -> datetime | None:
    return JobStatMark.objects.filter(name=MARK).values_list("through", flat=True).first()


def _split(since: datetime, now: datetime) -> tuple[datetime, datetime] | None:
    """(first whole minute, mark) when the roll-up covers part of [since, now), else None."""
    through = mark_through()
    if through is None:
        return None
    through = min(through, floor_minute(now))
    first = ceil_minute(since)
    return (first, through) if through > first else None


def _add_ledger(out: dict[Key, Totals], since: datetime, until: datetime | None, histograms: bool) -> None:
    qs = _finished(since, until)
    if histograms:
        qs = _with_timings(qs)
    for row in qs.values("queue", "job_type", "state").order_by().annotate(**_ledger_aggregates(histograms)):
        key = (row["queue"], row["job_type"], row["state"])
        out.setdefault(key, Totals()).add(**_ledger_row_totals(row, histograms))


def totals(since: datetime, now: datetime | None = None, *, histograms: bool = False) -> dict[Key, Totals]:
    """Jobs finished from `since` on, by (queue, job type, state): with the duration and
    lateness sums and histograms if `histograms` (what /metrics needs; more rows read)."""
    now = now or timezone.now()
    out: dict[Key, Totals] = {}
    split = _split(since, now)
    if split is None:
        _add_ledger(out, since, None, histograms)
        return out
    first, through = split
    _add_ledger(out, since, first, histograms)
    stats = JobStat.objects.filter(minute__gte=first, minute__lt=through)
    if histograms:
        for s in stats.only("queue", "job_type", "state", "count", "timed", "duration_sum", "lateness_sum",
                            "duration_buckets", "lateness_buckets"):
            out.setdefault((s.queue, s.job_type, s.state), Totals()).add(
                s.count, s.timed, s.duration_sum, s.lateness_sum, s.duration_buckets, s.lateness_buckets)
    else:
        for row in stats.values("queue", "job_type", "state").order_by().annotate(n=Sum("count"), t=Sum("timed")):
            out.setdefault((row["queue"], row["job_type"], row["state"]), Totals()).add(row["n"], row["t"])
    _add_ledger(out, through, None, histograms)
    return out


def hourly_counts(origin: datetime, now: datetime) -> dict[tuple[int, str], int]:
    """{(whole hours since `origin`, state): jobs finished} from `origin` to `now`."""
    counts: dict[tuple[int, str], int] = {}

    def add(rows):
        for row in rows:
            counts[(row["hour"], row["state"])] = counts.get((row["hour"], row["state"]), 0) + row["n"]

    def ledger(since: datetime, until: datetime | None):
        add(_finished(since, until).filter(finished_at__lte=now)
            .annotate(hour=UnitsSince("HOUR", origin, F("finished_at"))).values("hour", "state").order_by()
            .annotate(n=Count("pk")))

    split = _split(origin, now)
    if split is None:
        ledger(origin, None)
        return counts
    first, through = split
    ledger(origin, first)  # nothing when the origin is a whole minute (local midnight is)
    add(JobStat.objects.filter(minute__gte=first, minute__lt=through)
        .annotate(hour=UnitsSince("HOUR", origin, F("minute"))).values("hour", "state").order_by()
        .annotate(n=Sum("count")))
    ledger(through, None)
    return counts
