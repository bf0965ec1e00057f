"""Shared set-up for the benchmarks: Django on its own database and Redis db, and a real
qcluster subprocess. Nothing here is timed."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(db_name: str, redis_db: str) -> None:
    os.environ.setdefault("DB_NAME", db_name)
    os.environ.setdefault("REDIS_DB", redis_db)
    # At least 50 characters: outside debug the settings refuse a weaker key.
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-never-in-production-0123456789")
    os.environ.setdefault("LOG_FORMAT", "plain")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nextevent.settings")
    sys.path.insert(0, str(ROOT))
    import MySQLdb

    conn = MySQLdb.connect(host=os.environ.get("DB_HOST", "127.0.0.1"), user=os.environ.get("DB_USERNAME", "root"),
                           passwd=os.environ.get("DB_PASSWORD", ""), port=int(os.environ.get("DB_PORT", 3306)))
    conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{os.environ['DB_NAME']}` CHARACTER SET utf8mb4")
    conn.close()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def machine() -> str:
    cpus = os.cpu_count()
    return f"{platform.node()} {platform.machine()} {cpus} cores, Python {platform.python_version()}"


class Cluster:
    def __init__(self, queues: list[str], env: dict[str, str] | None = None, log: str = "/tmp/bench-qcluster.log"):
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "qcluster", "--no-sync-schedules", "--queues", ",".join(queues)],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.queues = queues

    def wait_ready(self, timeout: float = 60) -> None:
        from jobs.liveness import live_clusters

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = {c["queue"] for c in live_clusters() if c["workers_alive"] >= 1}
            if set(self.queues) <= up:
                time.sleep(1)  # let every worker finish starting
                return
            time.sleep(0.2)
        raise SystemExit(f"qcluster did not start within {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def wait(predicate, timeout: float, interval: float = 0.05):
    """Poll until predicate() is truthy; its value, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]
