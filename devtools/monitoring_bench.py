"""How long the operations views take on a large ledger. Seeds an EMPTY ledger with a week
of finished jobs (most of them long ago, `recent` in the last hour), then times every query
behind `jobs stats`, the dashboard, /metrics and /readyz.

    mysql -uroot -e "CREATE DATABASE IF NOT EXISTS nextevent_bench CHARACTER SET utf8mb4"
    DB_NAME=nextevent_bench REDIS_DB=13 DJANGO_DEBUG=1 python manage.py migrate
    DB_NAME=nextevent_bench REDIS_DB=13 DJANGO_DEBUG=1 DJANGO_ALLOWED_HOSTS=testserver \\
        python manage.py shell -c "from devtools.monitoring_bench import main; main()"

It refuses to run on a ledger that already has jobs, so it cannot mix with real ones. The
11-million-row case, with the change list and the dispatcher beside the views, is
bench/monitoring.py."""

from __future__ import annotations

import random
import time
from datetime import timedelta

WEEK = 7 * 86400
BATCH = 5000
TYPES = [("news:scheduled_publisher", "news"), ("news:expiration", "news"), ("wechat:draft_creation", "wechat"),
         ("system:noop", "default"), ("news:analytics", "analytics"), ("system:periodic", "critical")]


def seed(*, total: int, recent: int) -> None:
    from django.utils import timezone

    from jobs.models import Job

    rng = random.Random(7)
    now = timezone.now()
    batch: list[Job] = []

    def finished(ago: float, dead_rate: float) -> Job:
        job_type, queue = rng.choice(TYPES)
        done = now - timedelta(seconds=ago)
        started = done - timedelta(seconds=rng.expovariate(1 / 0.3))
        state = "dead" if rng.random() < dead_rate else "completed"
        return Job(job_type=job_type, queue=queue, state=state, timeout=60, payload={}, attempts=1,
                   run_at=started - timedelta(seconds=rng.expovariate(1 / 0.05)), started_at=started,
                   finished_at=done, last_error="RuntimeError: bench" if state == "dead" else "")

    for i in range(total):
        batch.append(finished(rng.uniform(0, 3600), 0.01) if i < recent else finished(rng.uniform(3600, WEEK), 0.003))
        if len(batch) >= BATCH:
            Job.objects.bulk_create(batch)
            batch.clear()
    batch += [Job(job_type="system:noop", queue="default", state="pending", timeout=60, payload={},
                  run_at=now - timedelta(seconds=i * 0.1), dispatched_at=now - timedelta(seconds=i * 0.1))
              for i in range(2000)]
    Job.objects.bulk_create(batch)


def timed(label: str, func, repeat: int = 5) -> float:
    func()  # warm the buffer pool and the connection
    started = time.perf_counter()
    for _ in range(repeat):
        func()
    ms = (time.perf_counter() - started) / repeat * 1000
    print(f"{label:<36}{ms:8.0f} ms")
    return ms


def main(total: int = 300_000, recent: int = 30_000) -> None:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from jobs import monitoring
    from jobs.monitoring import metrics as monitoring_metrics
    from jobs.models import Job

    if Job.objects.exists():
        raise SystemExit("the ledger is not empty: run this on a database of its own (see the docstring)")
    started = time.monotonic()
    seed(total=total, recent=recent)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE jobs_job")
    print(f"seeded {Job.objects.count()} jobs ({recent} finished in the last hour) "
          f"in {time.monotonic() - started:.0f} s")
    now = timezone.now()
    timed("ledger_counts", monitoring.ledger_counts)
    timed("finished_counts (1 h, today)", lambda: monitoring.finished_counts(now))
    timed("throughput (24 h + 7 days)", lambda: monitoring.throughput(now))
    timed("timing_percentiles (5000 sample)", lambda: monitoring.timing_percentiles(now))
    timed("metrics window_stats (1 h)", lambda: monitoring_metrics.window_stats(now))
    timed("metrics scrape, uncached", lambda: monitoring_metrics.render("", cache_seconds=0))
    user, _ = User.objects.get_or_create(username="bench-staff", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    timed("GET /admin/jobs/dashboard/", lambda: client.get("/admin/jobs/dashboard/"))
    timed("GET /readyz", lambda: client.get("/readyz"))
    with open("/dev/null", "w") as devnull:
        timed("manage.py jobs stats", lambda: call_command("jobs", "stats", stdout=devnull))
