"""Monitoring at ledger scale: prints how long the views people and Prometheus use take with
11 million rows in jobs_job, and what the dispatcher's hot path costs beside them.

    .venv/bin/python bench/monitoring.py [--completed 10000000] [--scheduled 1000000] [--refill]
    mysql -uroot -e "DROP DATABASE nextevent_bench10m"    # afterwards: about 6 GB on disk

Uses its own database (DB_NAME, default nextevent_bench10m) and Redis db (REDIS_DB, default
4). The ledger is filled once (kept between runs, --refill to redo it) with one
`INSERT ... SELECT` from MariaDB's sequence engine: `--completed` finished jobs spread evenly
over the 7-day retention window (0.3 % of them dead) and `--scheduled` jobs due 30 days and
more ahead (the secondary indexes dropped first and built afterwards, in one ALTER). Then,
each the mean of 3 runs after a warm-up:

- GET /admin/jobs/dashboard/, `manage.py jobs stats`, a /metrics scrape with no cache;
- GET /admin/jobs/job/ (the change list), unfiltered and filtered to dead;
- forward_due() with nothing due (the dispatcher's 0.1 s pass) and the dispatch precision of
  due jobs (dispatched_at - run_at of 200 jobs spread over 10 s, a real dispatcher thread).

With the per-minute roll-up (jobs/monitoring/rollup.py) present, its catch-up over the whole
window runs first and is timed too. The same file runs against an older checkout (it only
uses the views, the command and forward_due), which is how the "before" figures are taken.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, percentile, setup_django  # noqa: E402

TYPES = [("news:scheduled_publisher", "news"), ("news:expiration", "news"), ("wechat:draft_creation", "wechat"),
         ("system:noop", "default"), ("news:analytics", "analytics"), ("system:periodic", "critical")]
WINDOW_US = 7 * 86400 * 10**6


def _elt(index: int) -> str:
    return "ELT(1 + seq % 6, " + ", ".join(f"'{t[index]}'" for t in TYPES) + ")"


def fill(completed: int, scheduled: int) -> float:
    """Empty the ledger and fill it in two INSERT ... SELECT statements; returns seconds."""
    from django.db import connection

    started = time.monotonic()
    step = WINDOW_US // completed  # one finished job every `step` microseconds, the last one now
    columns = ("job_type, queue, payload, state, attempts, max_retries, timeout, run_at, created_at, dispatched_at, "
               "started_at, finished_at, lease_expires_at, worker, unique_key, live_key, last_error, errors, "
               "result, subject, waiting_reason")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM seq_1_to_3")  # the sequence engine must be there
        assert len(cursor.fetchall()) == 3
        cursor.execute("TRUNCATE TABLE jobs_job")
        # The secondary indexes are built after the rows, each in one sorted pass, rather than
        # row by row through a small buffer pool.
        cursor.execute("SELECT INDEX_NAME, NON_UNIQUE, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) "
                       "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                       "AND TABLE_NAME = 'jobs_job' AND INDEX_NAME <> 'PRIMARY' GROUP BY INDEX_NAME, NON_UNIQUE")
        secondary = cursor.fetchall()
        if secondary:
            cursor.execute("ALTER TABLE jobs_job " + ", ".join(f"DROP INDEX `{name}`" for name, _, _ in secondary))
        cursor.execute("SET @now = UTC_TIMESTAMP(6)")
        # finished_at grows with the id, as in a real ledger; durations 0-999 ms, lateness 0-96 ms.
        cursor.execute(
            f"INSERT INTO jobs_job ({columns}) "
            f"SELECT {_elt(0)}, {_elt(1)}, '{{}}', IF(seq % 300 = 0, 'dead', 'completed'), 1, 3, 60, "
            "t - INTERVAL (seq % 1000) * 1000 MICROSECOND - INTERVAL (seq % 97) * 1000 MICROSECOND, "
            "t - INTERVAL 2 SECOND, "
            "t - INTERVAL (seq % 1000) * 1000 MICROSECOND - INTERVAL (seq % 97) * 1000 MICROSECOND, "
            "t - INTERVAL (seq % 1000) * 1000 MICROSECOND, t, NULL, 'bench:1', NULL, NULL, "
            "IF(seq % 300 = 0, 'RuntimeError: bench', ''), '[]', '', '', '' "
            f"FROM (SELECT seq, @now - INTERVAL {WINDOW_US} MICROSECOND + INTERVAL (seq * {step}) MICROSECOND AS t "
            f"FROM seq_1_to_{completed}) s")
        cursor.execute(
            f"INSERT INTO jobs_job ({columns}) "
            f"SELECT {_elt(0)}, {_elt(1)}, '{{}}', 'scheduled', 0, 3, 60, "
            "@now + INTERVAL 30 DAY + INTERVAL seq SECOND, @now, NULL, NULL, NULL, NULL, '', NULL, NULL, '', '[]', "
            f"'', '', '' FROM seq_1_to_{scheduled}")
        inserted = time.monotonic()
        print(f"inserted {completed + scheduled:,} rows in {inserted - started:.0f} s", flush=True)
        if secondary:
            cursor.execute("ALTER TABLE jobs_job " + ", ".join(
                f"ADD {'INDEX' if non_unique else 'UNIQUE INDEX'} `{name}` ("
                + ", ".join(f"`{c}`" for c in cols.split(",")) + ")" for name, non_unique, cols in secondary))
        cursor.execute("ANALYZE TABLE jobs_job")
        cursor.fetchall()
    print(f"secondary indexes built in {time.monotonic() - inserted:.0f} s", flush=True)
    return time.monotonic() - started


def timed(func, repeat: int = 3) -> float:
    func()  # warm-up: the buffer pool and the connection, as a page seen a second time
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        runs.append(time.perf_counter() - t0)
    return statistics.mean(runs)


def dispatch_precision(n: int = 200, spread: float = 10.0) -> dict:
    from datetime import timedelta

    from django.db import connections
    from django.utils import timezone

    from jobs import scheduler
    from jobs.dispatcher import Dispatcher
    from jobs.models import Job, JobState
    from jobs.system import SYSTEM_NOOP

    stop = threading.Event()

    def run():
        try:
            Dispatcher("bench-monitoring").run(stop)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        start = timezone.now() + timedelta(seconds=3)
        ids = [scheduler.enqueue(SYSTEM_NOOP, {}, run_at=start + timedelta(seconds=spread * i / n)) for i in range(n)]
        deadline = time.monotonic() + spread + 60
        while Job.objects.filter(pk__in=ids, state=JobState.SCHEDULED).exists():
            if time.monotonic() > deadline:
                raise SystemExit("the dispatcher did not forward the jobs within a minute")
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
    late = [(d - r).total_seconds() for d, r in Job.objects.filter(pk__in=ids).values_list("dispatched_at", "run_at")]
    Job.objects.filter(pk__in=ids).delete()
    return {"jobs": n, "p50_s": percentile(late, 50), "p99_s": percentile(late, 99), "max_s": max(late)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completed", type=int, default=10_000_000)
    parser.add_argument("--scheduled", type=int, default=1_000_000)
    parser.add_argument("--refill", action="store_true", help="empty and fill the ledger again")
    parser.add_argument("--label", default="", help="a name for this run in the output (e.g. before/after)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver")
    setup_django("nextevent_bench10m", "4")

    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from jobs import dispatcher
    from jobs.models import Job
    from jobs.monitoring import metrics as monitoring_metrics
    from nextevent.redis import get_redis

    results: dict = {"machine": machine(), "label": args.label}
    get_redis().flushdb()  # this benchmark's own Redis db: stale wake-ups from a previous run
    with connection.cursor() as cursor:
        cursor.execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                       "AND TABLE_NAME = 'jobs_job'")
        estimate = cursor.fetchone()[0] or 0
    if args.refill or estimate < (args.completed + args.scheduled) // 2:
        results["fill_s"] = fill(args.completed, args.scheduled)
        print(f"filled {args.completed + args.scheduled:,} rows in {results['fill_s']:.0f} s", flush=True)
    results["rows"] = Job.objects.count()  # once, for the record (seconds at this size)

    try:
        from jobs.monitoring import rollup
    except ImportError:
        rollup = None  # an older checkout: no roll-up to catch up
    if rollup is not None:
        t0 = time.monotonic()
        passes, minutes = rollup.catch_up()
        results["rollup_catch_up_s"] = time.monotonic() - t0
        print(f"roll-up caught up: {minutes} minutes in {passes} passes, {results['rollup_catch_up_s']:.0f} s",
              flush=True)
        results["rollup_pass_s"] = timed(rollup.roll_up)

    user, _ = User.objects.get_or_create(username="bench-staff", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)

    def get(url):
        response = client.get(url, secure=True)  # production settings redirect http to https
        assert response.status_code == 200, (url, response.status_code)

    figures = [
        ("dashboard", "GET /admin/jobs/dashboard/", lambda: get("/admin/jobs/dashboard/")),
        ("jobs_stats", "manage.py jobs stats", lambda: call_command("jobs", "stats", stdout=open(os.devnull, "w"))),
        ("metrics", "/metrics scrape, uncached", lambda: monitoring_metrics.render("", cache_seconds=0)),
        ("changelist", "GET /admin/jobs/job/", lambda: get("/admin/jobs/job/")),
        ("changelist_dead", "GET /admin/jobs/job/?state__exact=dead",
         lambda: get("/admin/jobs/job/?state__exact=dead")),
        ("forward_due", "forward_due() pass, nothing due", lambda: dispatcher.forward_due()),
    ]
    for key, label, func in figures:
        results[key + "_s"] = timed(func, repeat=20 if key == "forward_due" else 3)
        print(f"  {label:<42}{results[key + '_s'] * 1000:9.1f} ms", flush=True)
    results["dispatch_precision"] = precision = dispatch_precision()

    print(f"machine: {results['machine']}; jobs_job rows: {results['rows']:,} {args.label}")
    if "rollup_catch_up_s" in results:
        print(f"  roll-up catch-up (whole window, once)   {results['rollup_catch_up_s']:9.1f} s")
        print(f"  roll-up pass, caught up                 {results['rollup_pass_s'] * 1000:9.1f} ms")
    for key, label, _ in figures:
        print(f"  {label:<42}{results[key + '_s'] * 1000:9.1f} ms")
    print(f"  dispatch precision (dispatched - run_at), {precision['jobs']} due jobs: "
          f"p50 {precision['p50_s'] * 1000:.0f} ms, p99 {precision['p99_s'] * 1000:.0f} ms, "
          f"max {precision['max_s'] * 1000:.0f} ms")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"monitoring{'-' + args.label if args.label else ''}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
