"""Where a job's CPU goes: CPU milliseconds per job, per process role, for raw django-q2
no-ops and for engine jobs, in one run on one cluster.

    .venv/bin/python bench/engine_cpu.py [--jobs 5000] [--workers 2]

On this machine kind (2 cores shared by the producer, the workers, MariaDB and Redis) the
throughput benchmark (bench/engine.py) is CPU-bound, so CPU per job is what decides jobs/s.
Roles: the producer (this process), qcluster's workers, the rest of qcluster's tree (pusher,
monitor, guard, supervisor, dispatcher), mariadbd and redis-server, read from /proc with
psutil before and after each run. Uses DB_NAME (default nextevent_bench) and REDIS_DB
(default 9), which it empties, like bench/engine.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Cluster, machine, setup_django  # noqa: E402
from bench.engine import bench_engine, bench_raw, reset  # noqa: E402

ROLES = ("producer", "workers", "qcluster other", "mariadbd", "redis-server")


def _role(proc, cluster_pids: set[int], me: int) -> str | None:
    import psutil

    try:
        if proc.pid == me:
            return "producer"
        if proc.pid in cluster_pids:
            # django-q2 names its processes with setproctitle: "qcluster Process-1:2 idle"...
            title = " ".join(proc.cmdline())
            return "workers" if ("processing" in title or "idle" in title) and "Process-" in title else "qcluster other"
        name = proc.name()
        if name in ("mariadbd", "redis-server"):
            return name
    except psutil.Error:
        pass
    return None


def cpu_snapshot(cluster_root: int) -> dict[str, float]:
    import os

    import psutil

    try:
        cluster_pids = {cluster_root} | {p.pid for p in psutil.Process(cluster_root).children(recursive=True)}
    except psutil.Error:
        cluster_pids = set()
    totals = dict.fromkeys(ROLES, 0.0)
    for proc in psutil.process_iter():
        role = _role(proc, cluster_pids, os.getpid())
        if role is None:
            continue
        try:
            t = proc.cpu_times()
            totals[role] += t.user + t.system
            if proc.pid in cluster_pids and any("Process-" in " ".join(c.cmdline()) for c in proc.children()):
                # django-q2 recycles a worker every `recycle` tasks: what exited workers used
                # is counted in their parent's children times once it has reaped them.
                totals["workers"] += t.children_user + t.children_system
        except psutil.Error:
            pass
    return totals


def measure(label: str, cluster_root: int, n: int, run) -> dict:
    before, t0 = cpu_snapshot(cluster_root), time.perf_counter()
    rate = run(n)
    wall = time.perf_counter() - t0
    time.sleep(0.5)  # let the last completions' CPU be counted
    after = cpu_snapshot(cluster_root)
    per_job = {role: (after[role] - before[role]) * 1000 / n for role in ROLES}
    return {"label": label, "jobs_per_s": rate, "wall_s": wall, "cpu_ms_per_job": per_job,
            "total_cpu_ms_per_job": sum(per_job.values())}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    setup_django("nextevent_bench", "9")
    reset()
    cluster = Cluster(["default"], env={"JOBS_WORKERS_DEFAULT": str(args.workers), "LOG_LEVEL": "WARNING"})
    rows = []
    try:
        cluster.wait_ready()
        bench_raw(200)
        bench_engine(200, bulk=True)
        rows.append(measure("raw django-q2", cluster.proc.pid, args.jobs, bench_raw))
        rows.append(measure("engine enqueue()", cluster.proc.pid, args.jobs, lambda n: bench_engine(n, bulk=False)))
        rows.append(measure("engine enqueue_many()", cluster.proc.pid, args.jobs,
                            lambda n: bench_engine(n, bulk=True)))
    finally:
        cluster.stop()
    print(f"machine: {machine()}; default queue with {args.workers} workers, {args.jobs} no-op jobs per run")
    print(f"{'CPU ms per job':24s}" + "".join(f"{r:>15s}" for r in ROLES) + f"{'total':>9s}{'jobs/s':>9s}")
    for row in rows:
        cells = "".join(f"{row['cpu_ms_per_job'][r]:15.3f}" for r in ROLES)
        print(f"{row['label']:24s}{cells}{row['total_cpu_ms_per_job']:9.3f}{row['jobs_per_s']:9.0f}")


if __name__ == "__main__":
    main()
