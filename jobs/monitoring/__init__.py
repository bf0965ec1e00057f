"""Read-only views of the job system for people and machines: per-queue counts, throughput,
lateness, failures and liveness. Used by `manage.py jobs`, the admin dashboard, /readyz
and /metrics. Every query is bounded (a time window, a LIMIT, or an index-only COUNT by
queue and state), and finished jobs are read from their per-minute roll-up (rollup.py) plus
the last few minutes of the ledger, so a large ledger does not make a scrape or a page slow.

Acting on jobs (retry, cancel, delete, pause, resume) stays in the jobs.services package."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db.models import Count, Min
from django.dispatch import Signal
from django.utils import dateformat, timezone

from jobs.models import Heartbeat, Job, JobState, QueuePause
from jobs.monitoring import rollup
from jobs.probes import check_redis
from jobs.queues import QUEUES

logger = logging.getLogger(__name__)

# States counted by queue everywhere: the live ones plus dead (which waits for a person).
# Completed and cancelled rows are history: counted only over time windows.
COUNTED_STATES = ("scheduled", "pending", "active", "retry", "dead")
FINISHED_COUNTED = rollup.FINISHED_COUNTED
DISPATCHER_ALIVE_SECONDS = 15  # dispatchers write their heartbeat every 5 s
DISPATCHER_SHOWN_SECONDS = 3600  # older rows are processes long gone
LATENESS_WINDOW = timedelta(hours=24)
LATENESS_SAMPLE = 5000  # the most recent finished jobs in the window


def local_day_start(now: datetime) -> datetime:
    return timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)


# ---------------------------------------------------------------- ledger


def ledger_counts() -> dict[str, dict[str, int]]:
    """{queue: {state: n}} for COUNTED_STATES; every known queue present. Naming the queues
    makes it 25 ranges of the (queue, state, dispatched_at) index, read index-only: its cost
    is the number of live and dead jobs, not the ledger's (without them MariaDB walks the
    whole index, completed rows included)."""
    counts = {q: dict.fromkeys(COUNTED_STATES, 0) for q in QUEUES}
    rows = (Job.objects.filter(queue__in=QUEUES, state__in=COUNTED_STATES).values("queue", "state").order_by()
            .annotate(n=Count("pk")))
    for row in rows:
        counts.setdefault(row["queue"], dict.fromkeys(COUNTED_STATES, 0))[row["state"]] = row["n"]
    return counts


def oldest_pending(now: datetime) -> dict[str, float]:
    """Seconds since the oldest pending job of each queue was handed to Redis (0 if none)."""
    oldest = dict(Job.objects.filter(state=JobState.PENDING).values("queue").order_by()
                  .annotate(t=Min("dispatched_at")).values_list("queue", "t"))
    ages = dict.fromkeys(QUEUES, 0.0)
    for queue, at in oldest.items():
        if at is not None:
            ages[queue] = round(max((now - at).total_seconds(), 0.0), 3)
    return ages


def finished_counts(now: datetime) -> dict[str, dict[str, int]]:
    """Per queue: completed, failed (dead) and expired jobs finished in the last hour and today
    (since local midnight), from the per-minute roll-up plus the few minutes since it
    (jobs/monitoring/rollup.py), so the cost does not grow with the ledger."""
    hour_ago = now - timedelta(hours=1)
    day_start = local_day_start(now)
    out = {queue: {"completed_1h": 0, "failed_1h": 0, "completed_today": 0, "failed_today": 0, "expired_1h": 0,
                   "expired_today": 0} for queue in QUEUES}
    kinds = {JobState.DEAD: "failed", JobState.EXPIRED: "expired"}
    for suffix, since in (("1h", hour_ago), ("today", day_start)):
        for (queue, _job_type, state), total in rollup.totals(since, now).items():
            key = f"{kinds.get(state, 'completed')}_{suffix}"
            if queue in out:
                out[queue][key] += total.count
    return out


def pauses() -> dict[str, QueuePause]:
    return {p.queue: p for p in QueuePause.objects.all()}


# ---------------------------------------------------------------- Redis side


def redis_state() -> dict:
    """Queue depths, live clusters and the apps' gauges; {"error": ...} if Redis is away
    (the ledger views still work without it)."""
    from jobs import broker
    from jobs.liveness import live_clusters
    from jobs.progress import progress_state

    try:
        check_redis()  # fail fast instead of through the shared client's retries
        depths = {q: broker.queue_depth(q) for q in QUEUES}
        clusters = live_clusters()
        moving = progress_state(depths)  # stalled queues, wedged clusters restarted
        loops = loop_restarts(moving)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "depths": {}, "clusters": [], "gauges": [], "progress": {},
                "loops": {}}
    return {"error": None, "depths": depths, "clusters": clusters, "gauges": app_gauges(), "progress": moving,
            "loops": loops}


def loop_restarts(progress: dict[str, dict]) -> dict[str, int]:
    """Restarts by the watchdogs in the last ten minutes, by loop: the dispatcher and the
    supervisor's main loop (jobs/watchdog.py), and wedged clusters (jobs/progress.py)."""
    from jobs.watchdog import restarts_by_loop

    counts = {"dispatcher": 0, "supervisor": 0, **restarts_by_loop()}
    counts["cluster"] = sum(r.get("wedged_restarts", 0) for r in progress.values())
    return counts


@dataclass(frozen=True)
class AppGauge:
    """One number an app shows beside the queues (the analytics buffer's length): a
    Prometheus gauge `name` and a line on the dashboard and in `jobs stats`."""

    name: str  # Prometheus metric name, e.g. nextevent_analytics_buffer_length
    label: str  # for people, e.g. "analytics buffer"
    help: str
    value: float


# Apps connect a receiver returning a list of AppGauge, read at scrape / page time; the
# engine never imports them (analytics/receivers.py connects one).
gauges_requested = Signal()


def app_gauges() -> list[AppGauge]:
    gauges = []
    for receiver, result in gauges_requested.send_robust(sender=None):
        if isinstance(result, Exception):
            logger.warning("gauge receiver %s failed: %s", getattr(receiver, "__name__", receiver), result)
            continue
        gauges.extend(result or [])
    return gauges


def cluster_rows(clusters: list[dict], now: datetime) -> list[dict]:
    rows = []
    for c in clusters:
        rows.append({
            "queue": c.get("queue", "?"), "host": c.get("host", "?"), "pid": c.get("pid"),
            "workers_alive": c.get("workers_alive", 0), "workers_expected": c.get("expected_workers"),
            "last_seen_s": round(max(now.timestamp() - float(c.get("at", 0)), 0.0), 1),
        })
    return sorted(rows, key=lambda r: (r["queue"], r["host"], r["pid"] or 0))


# ---------------------------------------------------------------- overview


def queue_overview(now: datetime | None = None, redis: dict | None = None) -> dict[str, dict]:
    """Everything `jobs stats` and the dashboard show per queue."""
    now = now or timezone.now()
    redis = redis if redis is not None else redis_state()
    counts = ledger_counts()
    finished = finished_counts(now)
    ages = oldest_pending(now)
    paused = pauses()
    out = {}
    for q in QUEUES:
        alive = [c for c in redis["clusters"] if c.get("queue") == q]
        pause = paused.get(q)
        out[q] = {
            **counts[q],
            **finished[q],
            "oldest_pending_age_s": ages.get(q, 0.0),
            "depth": redis["depths"].get(q),
            "clusters": len(alive),
            "workers_alive": sum(c.get("workers_alive", 0) for c in alive),
            **redis.get("progress", {}).get(q, {"last_claim_age_s": None, "stalled": False, "wedged_restarts": 0}),
            "paused": pause is not None,
            "paused_by": pause.paused_by if pause else "",
            "paused_at": pause.paused_at.isoformat() if pause else None,
        }
    return out


def dispatcher_rows(now: datetime) -> list[dict]:
    rows = Heartbeat.objects.filter(kind="dispatcher",
                                    seen_at__gte=now - timedelta(seconds=DISPATCHER_SHOWN_SECONDS))
    out = []
    for hb in rows.order_by("name")[:100]:
        age = max((now - hb.seen_at).total_seconds(), 0.0)
        out.append({"name": hb.name.removeprefix("dispatcher:"), "last_seen_s": round(age, 1),
                    "alive": age < DISPATCHER_ALIVE_SECONDS})
    return out


def health_heartbeat(now: datetime) -> dict | None:
    """The 30-second health check's last result, with its age; None if it never ran."""
    hb = Heartbeat.objects.filter(name="health").first()
    if hb is None:
        return None
    details = hb.details or {}
    return {"seen_at": hb.seen_at.isoformat(), "age_s": round(max((now - hb.seen_at).total_seconds(), 0.0), 1),
            "ok": bool(details.get("ok")), "problems": list(details.get("problems") or [])}


# ---------------------------------------------------------------- history


@dataclass(frozen=True)
class Bucket:
    start: datetime
    end: datetime
    label: str
    completed: int = 0
    failed: int = 0

    @property
    def processed(self) -> int:
        return self.completed + self.failed


def throughput(now: datetime | None = None) -> dict[str, list[Bucket]]:
    """Completed and failed (dead) jobs per hour over the last 24 hours and per local day over
    the last 7 days: the per-minute roll-up (and the ledger for the minutes since it) summed
    by hours since local midnight six days ago; the hours are then added up into local days
    here (so a day with a daylight-saving change has its 23 or 25 hours)."""
    now = now or timezone.now()
    # Local midnight six days ago, then UTC: aware arithmetic below must be absolute hours,
    # not wall-clock ones (they differ across a daylight-saving change).
    origin = (local_day_start(now) - timedelta(days=6)).astimezone(dt_timezone.utc)
    counts = rollup.hourly_counts(origin, now)

    def hour_start(index: int) -> datetime:
        return timezone.localtime(origin + timedelta(hours=index))

    last = int((now - origin).total_seconds() // 3600)
    hourly = []
    for index in range(last - 23, last + 1):
        start = hour_start(index)
        hourly.append(Bucket(start, start + timedelta(hours=1), start.strftime("%H:00"),
                             counts.get((index, JobState.COMPLETED), 0), counts.get((index, JobState.DEAD), 0)))
    days: dict = {}
    for index in range(0, last + 1):
        day = hour_start(index).date()
        done, failed = days.get(day, (0, 0))
        days[day] = (done + counts.get((index, JobState.COMPLETED), 0), failed + counts.get((index, JobState.DEAD), 0))
    daily = []
    for day, (done, failed) in sorted(days.items())[-7:]:
        start = timezone.make_aware(datetime.combine(day, datetime.min.time()))
        # Weekday and day in the active language (the dashboard's; English outside a request).
        daily.append(Bucket(start, start + timedelta(days=1), dateformat.format(start, "D j"), done, failed))
    return {"hourly": hourly, "daily": daily}


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(int(-(-p * len(sorted_values) // 100)), 1)  # ceil(p/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _summary(values: list[float]) -> dict:
    values.sort()
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": values[-1] if values else None}


def timing_percentiles(now: datetime | None = None, *, window: timedelta = LATENESS_WINDOW,
                       sample: int = LATENESS_SAMPLE) -> dict[str, dict]:
    """Lateness (started_at - run_at of the last attempt) and duration (finished_at -
    started_at) in seconds, per queue and for "all", over the most recent `sample` jobs
    finished within `window`."""
    now = now or timezone.now()
    rows = []
    since = now - window
    for state in (JobState.COMPLETED, JobState.DEAD):
        # One state at a time: each is a backward walk of the (state, finished_at) index that
        # stops at the LIMIT; both states in one query would sort the whole window.
        found = list(Job.objects.filter(state=state, finished_at__gte=since, started_at__isnull=False)
                     .order_by("-finished_at").values_list("queue", "run_at", "started_at", "finished_at")
                     [:sample])
        rows += found
        if len(found) == sample:
            # A full sample of completed jobs: older dead ones cannot be among the `sample`
            # most recent, so only the few newer ones are read (not a day of scattered rows).
            since = max(since, found[-1][3])
    rows = sorted(rows, key=lambda r: r[3], reverse=True)[:sample]
    lateness: dict[str, list[float]] = {"all": []}
    duration: dict[str, list[float]] = {"all": []}
    for queue, run_at, started_at, finished_at in rows:
        late = (started_at - run_at).total_seconds()
        took = (finished_at - started_at).total_seconds()
        for key in ("all", queue):
            lateness.setdefault(key, []).append(late)
            duration.setdefault(key, []).append(took)
    order = ["all", *QUEUES, *sorted(set(lateness) - {"all", *QUEUES})]
    return {key: {"lateness": _summary(lateness.get(key, [])), "duration": _summary(duration.get(key, []))}
            for key in order}


# ---------------------------------------------------------------- jobs


def recent_failures(limit: int = 20) -> list[Job]:
    return list(Job.objects.filter(state=JobState.DEAD).order_by("-finished_at", "-pk")[:limit])


def job_list(*, queue: str | None = None, state: str | None = None, job_type: str | None = None,
             subject: str | None = None, limit: int = 50) -> list[Job]:
    qs = Job.objects.all()
    if queue:
        qs = qs.filter(queue=queue)
    if state:
        qs = qs.filter(state=state)
    if job_type:
        qs = qs.filter(job_type=job_type)
    if subject:
        qs = qs.filter(subject=subject)
    return list(qs.order_by("-pk")[:limit])


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def first_line(text: str, width: int = 80) -> str:
    return (text.strip().splitlines() or [""])[0][:width]


def job_summary(job: Job) -> dict:
    return {"id": job.pk, "job_type": job.job_type, "queue": job.queue, "state": job.state,
            "attempts": job.attempts, "max_retries": job.max_retries, "run_at": _iso(job.run_at),
            "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at), "subject": job.subject,
            "last_error": first_line(job.last_error, 200)}


def job_detail(job: Job) -> dict:
    return {**job_summary(job), "payload": job.payload, "timeout": job.timeout,
            "created_at": _iso(job.created_at), "dispatched_at": _iso(job.dispatched_at),
            "lease_expires_at": _iso(job.lease_expires_at), "worker": job.worker, "unique_key": job.unique_key,
            "live": job.live_key is not None, "result": job.result, "last_error": job.last_error,
            "errors": list(job.errors or []), "priority": job.priority, "expires_at": _iso(job.expires_at),
            "waiting_reason": job.waiting_reason, "cancel_requested_at": _iso(job.cancel_requested_at),
            "cancelled_at": _iso(job.cancelled_at), "cancelled_by": job.cancelled_by,
            "run_now_at": _iso(job.run_now_at), "run_now_by": job.run_now_by}
