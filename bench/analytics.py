"""Analytics benchmark: prints its figures.

    DB_NAME=nextevent_analytics REDIS_DB=12 .venv/bin/python bench/analytics.py \
        [--single 20000] [--many 200000] [--workers 2] [--baseline 3000]

Needs MariaDB and Redis; creates and migrates DB_NAME if needed. Run it where no qcluster
serves that database and Redis db: it starts its own. It leaves the database as it found
it (its news items, counters, raw events and jobs are deleted at the end).

Measures, in one run, on the real services:
1. ingest, one process: record_event() calls (one event each), then record_events() calls
   (1,000 events each);
2. end to end: the events just ingested, from the buffer to committed counters, by
   `news:analytics` jobs on a real qcluster with --workers analytics worker processes;
3. the seed's design as baseline: one django-q2 task per event (async_task, each doing
   the per-event counter UPDATE) on a django-q2 cluster with the same worker count.
Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder would come first on sys.path and `import analytics` would
# find this file instead of the app.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import wait  # noqa: E402

TOTAL_FIELDS = {"view": "view_count", "share": "share_count", "like": "like_count"}


def seed_count_event(news_id: int, event_type: str) -> None:
    """The baseline task: what the seed did for every event, in its own django-q2 task."""
    from django.db.models import F

    from news.models import News

    field = TOTAL_FIELDS[event_type]
    News.objects.filter(pk=news_id).update(**{field: F(field) + 1})


def make_events(news_ids: list[int], n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    events = []
    for _ in range(n):
        r = rnd.random()
        event = {"news_id": rnd.choice(news_ids), "event_type": "view" if r < 0.8 else "share" if r < 0.9 else "like"}
        if rnd.random() < 0.7:
            event["user_id"] = f"u{rnd.randrange(50_000)}"
        if rnd.random() < 0.2:
            event["metadata"] = {"ref": rnd.choice(["home", "search", "wechat", "app"]), "pos": rnd.randrange(20)}
        events.append(event)
    return events


def bench_single(events: list[dict], max_seconds: float) -> tuple[int, float]:
    from analytics.ingest import record_event

    done = 0
    t0 = time.perf_counter()
    deadline = t0 + max_seconds
    for event in events:
        record_event(**event)
        done += 1
        if done % 500 == 0 and time.perf_counter() > deadline:
            break
    return done, time.perf_counter() - t0


def bench_many(events: list[dict], max_seconds: float, per_call: int = 1000) -> tuple[int, float]:
    from analytics.ingest import record_events

    done = 0
    t0 = time.perf_counter()
    deadline = t0 + max_seconds
    for start in range(0, len(events), per_call):
        done += record_events(events[start:start + per_call])
        if time.perf_counter() > deadline:
            break
    return done, time.perf_counter() - t0


def bench_end_to_end(expected: int, workers: int, news_ids: list[int], max_seconds: float) -> tuple[int, float]:
    from bench.common import Cluster
    from analytics.scheduling import NEWS_ANALYTICS
    from jobs.scheduler import enqueue
    from news.models import News
    from analytics.services import buffer_status
    from django.db.models import Sum

    cluster = Cluster(["analytics"], env={"JOBS_WORKERS_ANALYTICS": str(workers),
                                          "ANALYTICS_BATCH_THRESHOLD": str(10**12)},
                      log="/tmp/bench-analytics-qcluster.log")
    try:
        cluster.wait_ready()

        def counted() -> int:
            sums = News.objects.filter(pk__in=news_ids).aggregate(*(Sum(f) for f in TOTAL_FIELDS.values()))
            return sum(v or 0 for v in sums.values())

        t0 = time.perf_counter()
        for _ in range(workers):  # one job per worker: they drain the buffer together
            enqueue(NEWS_ANALYTICS, {"reason": "bench"})
        done = wait(lambda: buffer_status() == {"length": 0, "pending": 0} and counted() >= expected,
                    max_seconds, 0.05)
        elapsed = time.perf_counter() - t0
        if not done:
            print(f"  (end to end stopped at its {max_seconds:.0f} s bound; see {cluster.log.name})")
        return counted(), elapsed
    finally:
        cluster.stop()


def bench_baseline(n: int, workers: int, news_ids: list[int], max_seconds: float) -> tuple[int, float, float]:
    """One django-q2 task per event: a bare django-q2 cluster (manage.py jobs_cluster, as
    qcluster starts it per queue) with `workers` processes, fed by async_task."""
    from django.db.models import Sum
    from django_q.brokers import get_broker
    from django_q.tasks import async_task

    from news.models import News

    env = {**os.environ, "Q_CLUSTER_NAME": "analytics", "JOBS_WORKERS_ANALYTICS": str(workers)}
    log = open("/tmp/bench-analytics-baseline.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "jobs_cluster"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from jobs.liveness import live_clusters

        wait(lambda: any(c["queue"] == "analytics" and c["workers_alive"] >= workers for c in live_clusters()), 60, 0.2)
        time.sleep(1)

        def counted() -> int:
            return News.objects.filter(pk__in=news_ids).aggregate(n=Sum("view_count"))["n"] or 0

        broker = get_broker("analytics")  # reused: async_task opens a connection per call otherwise
        rnd = random.Random(3)
        t0 = time.perf_counter()
        for _ in range(n):
            async_task("bench.analytics.seed_count_event", rnd.choice(news_ids), "view", cluster="analytics",
                       broker=broker)
        enqueue_seconds = time.perf_counter() - t0
        wait(lambda: counted() >= n, max_seconds, 0.02)
        return counted(), time.perf_counter() - t0, enqueue_seconds
    finally:
        import signal

        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--single", type=int, default=20_000, help="events sent by record_event (max)")
    parser.add_argument("--many", type=int, default=200_000, help="events sent by record_events (max)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, batch and baseline alike")
    parser.add_argument("--baseline", type=int, default=3_000, help="django-q2 tasks in the baseline (max)")
    parser.add_argument("--news", type=int, default=1_000, help="news items the events spread over")
    args = parser.parse_args()

    from bench.common import machine, setup_django

    setup_django(os.environ.get("DB_NAME", "nextevent_analytics"), os.environ.get("REDIS_DB", "12"))
    from django.conf import settings
    from django.db.models import Max

    from analytics.ingest import STREAM_KEY
    from analytics.models import AppliedBatch, RawEvent
    from analytics.services import buffer_status
    from jobs.models import Job
    from news.models import News
    from analytics.buffer import buffer_redis

    if buffer_status() != {"length": 0, "pending": 0}:
        raise SystemExit(f"the buffer {STREAM_KEY} in Redis db {settings.REDIS.get('db')} is not empty: "
                         "run the benchmark on an idle database and Redis db")
    settings.ANALYTICS_BATCH_THRESHOLD = 10**12  # this process only: no threshold jobs while ingesting
    marks = {m: (m.objects.aggregate(x=Max("pk"))["x"] or 0) for m in (RawEvent, AppliedBatch, Job)}
    news_ids = [n.pk for n in News.objects.bulk_create(
        [News(title=f"bench analytics {i}", content="<p>bench</p>") for i in range(args.news)])]
    base_ids = [n.pk for n in News.objects.bulk_create(
        [News(title=f"bench baseline {i}", content="<p>bench</p>") for i in range(args.news)])]
    print(f"analytics benchmark on {machine()}; DB {settings.DATABASES['default']['NAME']}, "
          f"Redis db {settings.REDIS.get('db')}; {args.workers} worker(s); shared machine: other "
          f"processes may be using the CPU")
    try:
        events = make_events(news_ids, args.single + args.many, seed=1)
        n1, s1 = bench_single(events[:args.single], 20)
        print(f"ingest, record_event (1 event per call):    {n1:>8} events in {s1:6.2f} s = {n1 / s1:>9,.0f} events/s")
        n2, s2 = bench_many(events[args.single:], 30)
        print(f"ingest, record_events (1,000 per call):      {n2:>8} events in {s2:6.2f} s = {n2 / s2:>9,.0f} events/s")
        n3, s3 = bench_end_to_end(n1 + n2, args.workers, news_ids, 300)
        exact = "exact" if n3 == n1 + n2 else f"MISMATCH: {n1 + n2} ingested"
        print(f"end to end, buffer -> MariaDB (news:analytics jobs): {n3:>8} events in {s3:6.2f} s = "
              f"{n3 / s3:>9,.0f} events/s ({exact})")
        n4, s4, e4 = bench_baseline(args.baseline, args.workers, base_ids, 120)
        print(f"baseline, 1 django-q2 task per event:        {n4:>8} events in {s4:6.2f} s = {n4 / s4:>9,.0f} events/s "
              f"(enqueue alone {args.baseline / e4:,.0f}/s)")
        print(f"ratio end to end / baseline: {(n3 / s3) / (n4 / s4):.1f}x")
        targets = [("single calls >= 5,000/s", n1 / s1 >= 5000), ("many-events >= 20,000/s", n2 / s2 >= 20000),
                   ("end to end >= 10,000/s", n3 / s3 >= 10000), (">= 20x baseline", (n3 / s3) / (n4 / s4) >= 20)]
        print("targets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in targets))
    finally:
        _cleanup(news_ids + base_ids, marks)
        if buffer_status() == {"length": 0, "pending": 0}:
            buffer_redis().delete(STREAM_KEY)  # it was empty before the run


def _cleanup(news_ids: list[int], marks: dict) -> None:
    from jobs.maintenance import delete_in_batches
    from news.models import News

    for model, mark in marks.items():
        delete_in_batches(model.objects.filter(pk__gt=mark), batch=5000, max_batches=10_000)
    for start in range(0, len(news_ids), 500):
        News.objects.filter(pk__in=news_ids[start:start + 500]).delete()


if __name__ == "__main__":
    main()
