"""Job engine benchmark: prints its figures (and writes bench/results/engine.json).

    .venv/bin/python bench/engine.py [--jobs 5000] [--workers 2] [--lateness-jobs 1000]

Uses its own database (DB_NAME, default nextevent_bench) and Redis db (REDIS_DB, default 9),
which it empties, and one real qcluster subprocess running the default queue with
--workers worker processes. Measures, in one run:
1. throughput end to end (first enqueue to last completion) of no-op jobs: raw django-q2
   async_task vs the engine (per-job enqueue, and enqueue_many), same cluster, same workers;
2. lateness (started - run_at) of jobs whose run_at is spread over 30 s: p50, p99, max;
3. time from SIGKILL of a worker mid-job to the job running again (--kills rounds, other
   jobs running meanwhile): p50, p99, max;
4. time from SIGKILL of the cluster's main process to its queue running again (a job
   enqueued at the kill starting);
5. processes of qcluster's tree (every one seen during the run) alive after its stop: must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402
from bench.common import Cluster, machine, percentile, setup_django  # noqa: E402


def wait(predicate, timeout: float, what: str, interval: float = 0.05):
    value = common.wait(predicate, timeout, interval)
    if value is None:
        raise SystemExit(f"timed out waiting for {what}")
    return value


def reset():
    from jobs.models import Job
    from nextevent.redis import get_redis

    Job.objects.all().delete()
    get_redis().flushdb()


def bench_raw(n: int) -> float:
    from django_q.brokers import get_broker
    from django_q.tasks import async_task

    from nextevent.redis import get_redis

    counter = "bench:raw:done"
    get_redis().delete(counter)
    broker = get_broker("default")  # reused: async_task opens a connection per call otherwise
    t0 = time.perf_counter()
    for _ in range(n):
        async_task("bench.tasks.raw_noop", counter, cluster="default", broker=broker)
    wait(lambda: int(get_redis().get(counter) or 0) >= n, 600, "raw tasks", 0.01)
    return n / (time.perf_counter() - t0)


def _all_completed(ids: list[int]) -> bool:
    from jobs.models import Job, JobState

    # Cheap while waiting (the newest ids finish last, FIFO), then exact.
    tail = ids[-20:]
    if Job.objects.filter(pk__in=tail, state=JobState.COMPLETED).count() < len(tail):
        return False
    return not Job.objects.filter(pk__in=ids).exclude(state=JobState.COMPLETED).exists()


def bench_engine(n: int, bulk: bool) -> float:
    """Jobs/s from the first enqueue to the last job's finished_at (read from the ledger
    afterwards, so the waiting loop's own queries do not count)."""
    from django.db.models import Max

    from jobs import scheduler
    from jobs.system import SYSTEM_NOOP
    from jobs.models import Job

    started = time.time()
    ids: list[int] = []
    if bulk:
        for start in range(0, n, 500):
            ids += scheduler.enqueue_many(SYSTEM_NOOP, [{}] * min(500, n - start))
    else:
        for _ in range(n):
            ids.append(scheduler.enqueue(SYSTEM_NOOP, {}))
    wait(lambda: _all_completed(ids), 600, "engine jobs", 0.25)
    last = Job.objects.filter(pk__in=ids).aggregate(t=Max("finished_at"))["t"]
    return n / (last.timestamp() - started)


def bench_lateness(n: int, spread: float) -> dict:
    from datetime import timedelta

    from django.utils import timezone

    from jobs import scheduler
    from jobs.system import SYSTEM_NOOP
    from jobs.models import Job, JobState

    start = timezone.now() + timedelta(seconds=5)
    ids = [scheduler.enqueue(SYSTEM_NOOP, {}, run_at=start + timedelta(seconds=spread * i / n))
           for i in range(n)]
    wait(lambda: Job.objects.filter(pk__in=ids, state=JobState.COMPLETED).count() == n, spread + 120, "lateness jobs")
    lateness = [(s - r).total_seconds() for s, r in Job.objects.filter(pk__in=ids).values_list("started_at", "run_at")]
    return {"jobs": n, "spread_s": spread, "p50_s": percentile(lateness, 50), "p99_s": percentile(lateness, 99),
            "max_s": max(lateness), "min_s": min(lateness), "early": sum(1 for x in lateness if x < 0)}


def bench_sigkill(rounds: int) -> list[float]:
    """SIGKILL of a worker mid-job to the job's second attempt starting, with short jobs
    keeping the other workers busy meanwhile."""
    from jobs import scheduler
    from jobs.system import SYSTEM_NOOP
    from jobs.models import Job, JobState

    out = []
    for _ in range(rounds):
        scheduler.enqueue_many(SYSTEM_NOOP, [{"sleep": 0.02}] * 100)  # load around the kill
        job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 5})
        job = wait(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE).first(), 60, "active job", 0.01)
        os.kill(int(job.worker.rsplit(":", 1)[1]), signal.SIGKILL)
        killed = time.time()
        again = wait(lambda: Job.objects.filter(pk=job_id, attempts=2).exclude(state=JobState.RETRY).first(), 60,
                     "second attempt", 0.01)
        out.append(again.started_at.timestamp() - killed)
        wait(lambda: Job.objects.filter(pk=job_id, state=JobState.COMPLETED).exists(), 30, "completion")
    return out


def bench_cluster_kill(cluster, rounds: int) -> list[float]:
    """SIGKILL of the default cluster's main process to a job enqueued at that moment starting."""
    import psutil

    from jobs import scheduler
    from jobs.system import SYSTEM_NOOP
    from jobs.models import Job

    out = []
    for _ in range(rounds):
        main = psutil.Process(cluster.proc.pid).children()[0]
        main.kill()
        killed = time.time()
        job_id = scheduler.enqueue(SYSTEM_NOOP, {})
        job = wait(lambda: Job.objects.filter(pk=job_id, started_at__isnull=False).first(), 120, "queue running again",
                   0.02)
        out.append(job.started_at.timestamp() - killed)
        time.sleep(2)
    return out


class TreeSampler:
    """Every process seen in qcluster's tree during the run, sampled every 0.2 s."""

    def __init__(self, root: int):
        import threading

        self.root, self.seen, self._stop = root, set(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.wait(0.2):
            try:
                for p in psutil.Process(self.root).children(recursive=True):
                    try:
                        self.seen.add((p.pid, p.create_time()))
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass

    def alive_after_stop(self) -> int:
        import psutil

        self._stop.set()
        self._thread.join(5)
        time.sleep(2)
        alive = 0
        for pid, ctime in self.seen:
            try:
                p = psutil.Process(pid)
                if p.create_time() == ctime and p.status() != psutil.STATUS_ZOMBIE:
                    alive += 1
                    p.kill()  # the bench leaves nothing behind either way
            except psutil.Error:
                pass
        return alive


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lateness-jobs", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=30.0)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--cluster-kills", type=int, default=5)
    args = parser.parse_args()

    setup_django("nextevent_bench", "9")
    reset()
    cluster = Cluster(["default"], env={"JOBS_WORKERS_DEFAULT": str(args.workers), "LOG_LEVEL": "WARNING"})
    tree = TreeSampler(cluster.proc.pid)
    results = {"machine": machine(), "workers": args.workers, "jobs": args.jobs}
    try:
        cluster.wait_ready()
        bench_raw(200)  # warm-up: every worker imports and connects
        bench_engine(200, bulk=True)
        results["raw_django_q2_jobs_per_s"] = bench_raw(args.jobs)
        results["engine_enqueue_jobs_per_s"] = bench_engine(args.jobs, bulk=False)
        results["engine_enqueue_many_jobs_per_s"] = bench_engine(args.jobs, bulk=True)
        results["engine_vs_raw"] = results["engine_enqueue_jobs_per_s"] / results["raw_django_q2_jobs_per_s"]
        results["engine_many_vs_raw"] = results["engine_enqueue_many_jobs_per_s"] / results["raw_django_q2_jobs_per_s"]
        results["lateness"] = bench_lateness(args.lateness_jobs, args.spread)
        kills = bench_sigkill(args.kills)
        results["sigkill_to_rerun_s"] = kills
        results["worker_kill_to_rerun"] = {"kills": len(kills), "p50_s": percentile(kills, 50),
                                           "p99_s": percentile(kills, 99), "max_s": max(kills)}
        results["cluster_kill_to_queue_running_s"] = bench_cluster_kill(cluster, args.cluster_kills)
    finally:
        cluster.stop()
        results["processes_alive_after_stop"] = tree.alive_after_stop()

    lat = results["lateness"]
    print(f"machine: {results['machine']}; default queue with {args.workers} workers")
    print(f"throughput, {args.jobs} no-op jobs, first enqueue to last completion:")
    print(f"  raw django-q2 async_task      {results['raw_django_q2_jobs_per_s']:8.0f} jobs/s")
    print(f"  engine, enqueue() per job     {results['engine_enqueue_jobs_per_s']:8.0f} jobs/s "
          f"({results['engine_vs_raw']:.0%} of raw)")
    print(f"  engine, enqueue_many()        {results['engine_enqueue_many_jobs_per_s']:8.0f} jobs/s "
          f"({results['engine_many_vs_raw']:.0%} of raw)")
    print(f"lateness (started - run_at), {lat['jobs']} jobs over {lat['spread_s']:.0f} s: "
          f"p50 {lat['p50_s']*1000:.0f} ms, p99 {lat['p99_s']*1000:.0f} ms, max {lat['max_s']*1000:.0f} ms, "
          f"early {lat['early']}")
    wk = results["worker_kill_to_rerun"]
    print(f"SIGKILL of a worker mid-job to the job running again, {wk['kills']} kills: p50 {wk['p50_s']:.2f} s, "
          f"p99 {wk['p99_s']:.2f} s, max {wk['max_s']:.2f} s")
    ck = results["cluster_kill_to_queue_running_s"]
    print(f"SIGKILL of the cluster's main process to its queue running again, {len(ck)} kills: "
          f"p50 {percentile(ck, 50):.2f} s, max {max(ck):.2f} s")
    print(f"processes of qcluster's tree alive after its stop: {results['processes_alive_after_stop']}")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "engine.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
