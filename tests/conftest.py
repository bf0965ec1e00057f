"""Shared fixtures: real MariaDB (pytest-django's test database), real Redis (db 15 by
default) and real `manage.py qcluster` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent

# One factor for every upper time bound in the tests: a loaded or slow machine sets
# TEST_TIME_SLACK=2 (or more) instead of each test guessing its own margin. Lower bounds
# (not before run_at, backoff at least 1 s) are guarantees and never scaled.
TIME_SLACK = float(os.environ.get("TEST_TIME_SLACK", "1") or 1)
if TIME_SLACK < 1:
    raise RuntimeError(f"TEST_TIME_SLACK must be >= 1, got {TIME_SLACK}")


def slack(seconds: float) -> float:
    """An upper time bound scaled by TEST_TIME_SLACK."""
    return seconds * TIME_SLACK


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail naming what was awaited.
    The timeout is an upper bound: scaled by TEST_TIME_SLACK."""
    timeout = slack(timeout)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


BEIJING = "Asia/Shanghai"  # WeChat's quota day and the default TIME_ZONE


@pytest.fixture
def beijing_daytime():
    """The process clock moved to 12:00 today in Beijing, ticking: a test that compares
    with next_quota_reset() or localdate() computed afterwards cannot straddle midnight
    there (16:00 UTC), whatever the hour of the run. Only this process's clock moves:
    MariaDB, Redis and subprocesses keep theirs."""
    from datetime import datetime, time as dtime
    from zoneinfo import ZoneInfo

    import time_machine
    from django.utils import timezone

    zone = ZoneInfo(BEIJING)
    noon = datetime.combine(timezone.now().astimezone(zone).date(), dtime(12), tzinfo=zone)
    with time_machine.travel(noon, tick=True):
        yield noon


@pytest.fixture
def clear_of_local_midnight():
    """For tests whose days come from a clock this process cannot move (Redis stamps
    analytics events with its own time): if midnight in TIME_ZONE is less than a minute
    away (two minutes: the longest such test with its clusters), wait until it has passed,
    so the test's events and its expectations share a day."""
    from datetime import datetime, time as dtime, timedelta

    from django.utils import timezone

    now = timezone.localtime()
    midnight = timezone.make_aware(datetime.combine(now.date() + timedelta(days=1), dtime.min))
    left = (midnight - now).total_seconds()
    if left < 120:
        time.sleep(left + 0.5)
    yield


def wait_dispatcher_pass(since, timeout: float = 30.0):
    """Wait until some dispatcher has run a whole pass that began after `since` (a datetime).
    A dispatcher writes its heartbeat at the end of a pass (every 5 s): its second beat after
    `since` ends a pass that began after the first. The proof a negative check needs ("the
    dispatcher looked and did not forward it"), instead of a sleep that proves nothing on a
    slow machine."""
    from jobs.models import Heartbeat

    seen: dict[str, set] = {}

    def two_beats():
        for name, at in Heartbeat.objects.filter(kind="dispatcher", seen_at__gt=since).values_list("name", "seen_at"):
            seen.setdefault(name, set()).add(at)
        return any(len(beats) >= 2 for beats in seen.values())

    wait_for(two_beats, timeout, 0.1, f"a dispatcher pass that began after {since.isoformat()}")


def run_concurrently(func, n: int) -> tuple[list, list]:
    """Call func() in n threads released together by a barrier; each thread closes its own
    database connection. Returns (results, exceptions)."""
    import threading

    from django.db import connections

    results, errors, barrier = [], [], threading.Barrier(n)

    def run():
        try:
            barrier.wait()
            results.append(func())
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


class ClusterProcess:
    """A `manage.py qcluster` subprocess on the test database."""

    def __init__(self, args, env, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "qcluster", *args],
                                     cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, queues, timeout: float = 60.0):
        from jobs.liveness import live_clusters

        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"qcluster exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            mine = {c["queue"] for c in live_clusters() if c["workers_alive"] >= 1 and self._is_mine(c["pid"])}
            return set(queues) <= mine

        wait_for(ready, timeout, 0.2, f"qcluster {self.pid} to run {queues}")
        return self

    def _is_mine(self, pid: int) -> bool:
        import psutil

        try:
            return psutil.Process(pid).ppid() == self.pid
        except psutil.Error:
            return False

    def worker_pids(self) -> list[int]:
        """PIDs of django-q2 worker processes (grandchildren: supervisor > cluster > sentinel > workers)."""
        import psutil

        pids = []
        for cluster in psutil.Process(self.pid).children():
            for sentinel in cluster.children():
                pids += [p.pid for p in sentinel.children()]
        return pids

    def stop(self, sig=signal.SIGTERM, group: bool = False, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"qcluster {self.pid} did not stop within {timeout} s:\n{self.log()[-3000:]}")
        self._log.close()
        return self.proc.returncode

    def kill(self):
        """SIGKILL the whole tree, as a crashed host would lose it."""
        import psutil

        try:
            tree = [psutil.Process(self.pid)] + psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(10)


@pytest.fixture(scope="session")
def cluster_env(django_db_setup):
    """Environment for subprocesses: the test database, small worker pools, fast timings."""
    env = dict(os.environ)
    env["DB_NAME"] = connection.settings_dict["NAME"]
    env.setdefault("JOBS_WORKERS_CRITICAL", "2")
    env.setdefault("JOBS_WORKERS_NEWS", "2")
    env.setdefault("JOBS_WORKERS_WECHAT", "2")
    env.setdefault("JOBS_WORKERS_ANALYTICS", "1")
    env.setdefault("JOBS_WORKERS_DEFAULT", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def start_cluster(cluster_env, tmp_path, request):
    """Start qcluster subprocesses; every one is stopped (or killed) after the test."""
    started: list[ClusterProcess] = []

    def start(*args, queues=None, env=None, wait=True, sync_schedules=False):
        full_env = {**cluster_env, **(env or {})}
        argv = list(args)
        if not sync_schedules:
            argv.append("--no-sync-schedules")
        if queues:
            argv += ["--queues", ",".join(queues)]
        cluster = ClusterProcess(argv, full_env, tmp_path / f"qcluster-{len(started)}.log")
        started.append(cluster)
        if wait:
            cluster.wait_ready(queues or list(settings.JOBS_QUEUES))
        return cluster

    yield start
    for cluster in started:
        if cluster.proc.poll() is None:
            cluster.stop(timeout=40)
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for cluster in started:
            print(f"--- qcluster {cluster.pid} log ---\n{cluster.log()[-5000:]}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(autouse=True)
def clean_redis():
    """Each test starts with an empty Redis database (db 15 unless REDIS_DB says otherwise)."""
    from nextevent.redis import get_redis

    assert settings.REDIS.get("db", 0) != 0 or os.environ.get("NEXTEVENT_TESTS_ALLOW_DB0"), \
        "tests flush their Redis database: point REDIS_DB away from 0"
    get_redis().flushdb()
    yield
