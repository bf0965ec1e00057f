"""Stops that always stop: N runs each of SIGTERM to every process of qcluster's tree at once
(systemd's KillMode=control-group), SIGTERM during start-up, and SIGTERM while every MySQL
connection is blackholed. Prints, per case, how many stopped within the grace (plus a margin
for the supervisor's own last steps) and the slowest stop; leaves no process behind.

    DB_NAME=nextevent_bench_stops REDIS_DB=3 .venv/bin/python bench/stops.py --runs 20
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Cluster, machine, setup_django, wait  # noqa: E402

GRACE = 10
MARGIN = 5  # the supervisor's own last steps after the grace: kill, reap, release


def tree(pid: int) -> list:
    import psutil

    try:
        return [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def left_behind(pids: set[int]) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            pass
    return alive


def one_stop(case: str, env: dict) -> tuple[float, bool, list[int]]:
    from jobs import scheduler
    from jobs.models import Job, JobState
    from jobs.system import SYSTEM_NOOP
    from tests.outage import OutageProxy

    proxy = None
    if case == "blackholed-mysql":
        proxy = OutageProxy("127.0.0.1", int(os.environ.get("DB_PORT", 3306)))
        env = {**env, "DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port)}
    cluster = Cluster(["default", "news"], env={**env, "JOBS_SHUTDOWN_GRACE": str(GRACE)}, log=f"/tmp/bench-stops-{case}.log")
    seen: set[int] = set()
    try:
        if case == "during-start-up":
            time.sleep(1.5)  # Django loaded, clusters being forked
        else:
            cluster.wait_ready()
            job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 3})
            wait(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE).exists(), 20)
        procs = tree(cluster.proc.pid)
        seen = {p.pid for p in procs}
        if proxy is not None:
            proxy.blackhole()
            time.sleep(0.5)
        t0 = time.monotonic()
        targets = procs if case == "control-group" else procs[:1]
        for p in targets:
            try:
                p.send_signal(signal.SIGTERM)
            except Exception:
                pass
        try:
            cluster.proc.wait(GRACE + MARGIN + 45)
        except Exception:
            pass
        took = time.monotonic() - t0
        stopped = cluster.proc.poll() is not None and took <= GRACE + MARGIN
        time.sleep(0.5)
        return took, stopped, left_behind(seen | {p.pid for p in tree(cluster.proc.pid)})
    finally:
        for p in tree(cluster.proc.pid):
            try:
                p.kill()
            except Exception:
                pass
        for pid in left_behind(seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        cluster.proc.wait(10)
        cluster.log.close()
        if proxy is not None:
            proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--cases", default="control-group,during-start-up,blackholed-mysql")
    args = parser.parse_args()
    setup_django("nextevent_bench_stops", "3")
    env = {"JOBS_WORKERS_DEFAULT": "2", "JOBS_WORKERS_NEWS": "2"}
    print(f"machine: {machine()}; grace {GRACE} s (+{MARGIN} s margin)")
    failures = 0
    for case in args.cases.split(","):
        times, ok, leftovers = [], 0, []
        for _ in range(args.runs):
            took, stopped, left = one_stop(case, env)
            times.append(took)
            ok += stopped
            leftovers += left
        failures += args.runs - ok + len(leftovers)
        print(f"{case}: {ok}/{args.runs} stopped within the grace; slowest {max(times):.1f} s, "
              f"median {sorted(times)[len(times) // 2]:.1f} s; processes left behind: {len(leftovers)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
