"""`python manage.py qcluster`: one process that runs a django-q2 cluster per queue as
child processes, the engine's dispatcher in a thread, and stops them all cleanly.

Each cluster child runs in its own session, so a signal sent to the supervisor's whole
process group (systemd's KillMode=control-group, `docker stop`, Ctrl-C in a terminal)
reaches only the supervisor, which then stops each cluster by signalling its main process
alone. django-q2 hangs when every process of a cluster gets the signal at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil
from django.conf import settings

from jobs import services
from jobs.dispatcher import Dispatcher

logger = logging.getLogger(__name__)

RESTART_DELAY_MAX = 30.0


@dataclass
class Child:
    queue: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    pids: set[int] = field(default_factory=set)


class Supervisor:
    def __init__(self, queues: list[str], *, dispatcher: bool = True, grace: float | None = None):
        self.queues = queues
        self.run_dispatcher = dispatcher
        self.grace = settings.JOBS_SHUTDOWN_GRACE if grace is None else grace
        self.stop = threading.Event()
        self.children = [Child(q) for q in queues]
        self.host = socket.gethostname()

    # -------------------------------------------------------------- lifecycle

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        dispatcher_thread = None
        if self.run_dispatcher:
            dispatcher = Dispatcher(f"{self.host}:{os.getpid()}")
            dispatcher_thread = threading.Thread(target=dispatcher.run, args=(self.stop,), name="dispatcher",
                                                 daemon=True)
            dispatcher_thread.start()
        for child in self.children:
            self._start(child)
        logger.info("qcluster supervisor %s running queues %s%s", os.getpid(), ", ".join(self.queues),
                    " with dispatcher" if self.run_dispatcher else "")
        while not self.stop.is_set():
            for child in self.children:
                self._watch(child)
            self.stop.wait(0.5)
        self._shutdown()
        if dispatcher_thread:
            dispatcher_thread.join(timeout=10)
        logger.info("qcluster supervisor %s stopped", os.getpid())
        return 0

    def _on_signal(self, signum, frame):
        if not self.stop.is_set():
            logger.info("qcluster supervisor got %s: stopping (grace %s s)", signal.Signals(signum).name, self.grace)
        self.stop.set()

    def _start(self, child: Child) -> None:
        env = {**os.environ, "Q_CLUSTER_NAME": child.queue}
        child.process = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "jobs_cluster"],
            env=env, start_new_session=True,
        )
        child.started_at = time.monotonic()
        logger.info("started %s cluster (pid %s)", child.queue, child.process.pid)

    def _watch(self, child: Child) -> None:
        proc = child.process
        if proc is not None and proc.poll() is None:
            child.pids |= _tree(proc.pid)
            if time.monotonic() - child.started_at > 60:
                child.restarts = 0
            return
        now = time.monotonic()
        if proc is not None:
            # Died on its own: its running jobs' leases will expire and the reaper re-runs
            # them; restart with a growing delay so a crash loop cannot spin.
            delay = min(2 ** child.restarts, RESTART_DELAY_MAX)
            logger.error("%s cluster (pid %s) exited with %s; restarting in %.0f s", child.queue, proc.pid,
                         proc.returncode, delay)
            child.process = None
            child.restarts += 1
            child.next_start = now + delay
        if now >= child.next_start:
            self._start(child)

    def _shutdown(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            child.pids |= _tree(child.process.pid)
            try:
                os.kill(child.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(c.process.poll() is None for c in running):
            for child in running:
                if child.process.poll() is None:
                    child.pids |= _tree(child.process.pid)
            time.sleep(0.2)
        killed: list[str] = []
        for child in running:
            if child.process.poll() is None:
                child.pids |= _tree(child.process.pid)
                logger.warning("%s cluster did not stop within %s s: killing it", child.queue, self.grace)
                try:
                    os.killpg(child.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.process.wait(timeout=10)
                killed += [f"{self.host}:{pid}" for pid in child.pids]
        if killed:
            released = services.jobs_release_workers(killed)
            logger.warning("released %d interrupted job(s) for another run", released)


def _tree(pid: int) -> set[int]:
    try:
        proc = psutil.Process(pid)
        return {pid} | {p.pid for p in proc.children(recursive=True)}
    except psutil.Error:
        return set()


def check_services() -> str | None:
    """One readable line if MySQL or Redis cannot be reached, else None."""
    from django.db import connection

    from nextevent.config import describe_redis
    from nextevent.redis import get_redis

    db = settings.DATABASES["default"]
    try:
        connection.ensure_connection()
        from jobs.models import Job

        Job.objects.exists()
    except Exception as exc:
        where = db["NAME"] if "sqlite" in db["ENGINE"] else f"{db.get('HOST')}:{db.get('PORT')}/{db['NAME']}"
        hint = ("run `python manage.py migrate` first" if "doesn't exist" in str(exc) or "no such table" in str(exc)
                else "check DB_HOST, DB_PORT, DB_USERNAME, DB_PASSWORD, DB_NAME and that the server is running")
        return f"cannot use the database at {where}: {str(exc).splitlines()[0]} ({hint})"
    try:
        get_redis().ping()
    except Exception as exc:
        from nextevent.redis_sentinel import settings_hint

        return f"cannot reach Redis at {describe_redis(settings.REDIS)}: {exc} ({settings_hint()})"
    return None
