"""`python manage.py qcluster`: one process that runs a django-q2 cluster per queue as
child processes, the engine's dispatcher in a thread, and stops them all cleanly.

Each cluster child runs in its own session, so a signal sent to the supervisor's whole
process group (systemd's KillMode=control-group, `docker stop`, Ctrl-C in a terminal)
reaches only the supervisor, which then stops each cluster by signalling its main process
alone. django-q2 hangs when every process of a cluster gets the signal at once.

Nothing outlives its owner (jobs/proctree.py): each cluster's main process dies with the
supervisor, and everything django-q2 forks dies with its parent; when a cluster's main
process exits the supervisor SIGKILLs what is left of its process group before reaping it;
the supervisor is its tree's child subreaper, so any orphan comes back to it and is killed.
A wedged cluster (alive, its queue's list holding wake-ups, claiming nothing and running
nothing for JOBS_STALL_AFTER) is killed whole and restarted. A reaper thread re-runs at once
the jobs whose worker process died on this host (jobs/reaper.py).
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
from datetime import datetime, timedelta

import psutil
from django.conf import settings
from django.utils import timezone

from jobs import broker, progress, proctree, services
from jobs.dispatcher import Dispatcher
from jobs.models import Job, JobState
from jobs.reaper import run_reaper
from jobs.watchdog import Beat, report_stuck

logger = logging.getLogger(__name__)

RESTART_DELAY_MAX = 30.0
RESTART_DELAY_MIN = 0.5


@dataclass
class Child:
    queue: str
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    # Holder ids ("host:start:pid") of every process seen in its tree, for release at stop.
    holders: dict[int, str] = field(default_factory=dict)
    backlog_since: float | None = None  # when its queue's list was first seen non-empty
    died_at: datetime | None = None  # its last cluster died; wake-ups it held to re-push
    dead_pgid: int = 0


class Supervisor:
    def __init__(self, queues: list[str], *, dispatcher: bool = True, grace: float | None = None):
        self.queues = queues
        self.run_dispatcher = dispatcher
        self.grace = settings.JOBS_SHUTDOWN_GRACE if grace is None else grace
        self.stop = threading.Event()
        self.children = [Child(q) for q in queues]
        self.host = socket.gethostname()
        self.cluster_groups: set[int] = set()  # process groups of the clusters we started
        self.progress = Beat("supervisor")  # the main loop's turns, read by the watchdog
        self.dispatcher: Dispatcher | None = None
        self.dispatcher_thread: threading.Thread | None = None
        self.dispatchers_started = 0

    # -------------------------------------------------------------- watchdog (jobs/watchdog.py)

    def _start_dispatcher(self) -> None:
        self.dispatchers_started += 1
        # A replacement gets a name (and heartbeat row) of its own: the stuck one may hold the
        # old row's lock.
        suffix = "" if self.dispatchers_started == 1 else f"/{self.dispatchers_started}"
        self.dispatcher = Dispatcher(f"{self.host}:{os.getpid()}{suffix}")
        self.dispatcher_thread = threading.Thread(target=self.dispatcher.run, args=(self.stop,), name="dispatcher",
                                                  daemon=True)
        self.dispatcher_thread.start()

    def _watchdog(self) -> None:
        bound = settings.JOBS_LOOP_STUCK_AFTER
        while not self.stop.wait(1.0):
            dispatcher = self.dispatcher
            if dispatcher is not None and dispatcher.progress.age() > bound:
                stuck = dispatcher.progress.age()
                logger.error("dispatcher %s is stuck (no turn for %.0f s, bound JOBS_LOOP_STUCK_AFTER=%g s): "
                             "starting a replacement", dispatcher.name, stuck, bound)
                report_stuck("dispatcher", self.host, os.getpid(), stuck)
                # Two dispatchers at once are safe (rows are claimed with SKIP LOCKED and moved
                # by conditional UPDATEs): the stuck one ends when it comes back.
                dispatcher.retired.set()
                self._start_dispatcher()
            if self.progress.age() > bound and not self.stop.is_set():
                self._restart_stuck_supervisor(self.progress.age())

    def _restart_stuck_supervisor(self, stuck: float) -> None:
        """The main loop is stuck: nothing watches the clusters. Kill them whole (their jobs'
        holders are then dead on this host, so the restarted supervisor's reaper runs them
        again at once, fenced by their claim numbers) and replace this process with a fresh
        one of the same command line."""
        logger.error("qcluster supervisor %s main loop is stuck (no turn for %.0f s, bound JOBS_LOOP_STUCK_AFTER=%g s): "
                     "killing its clusters and restarting", os.getpid(), stuck, settings.JOBS_LOOP_STUCK_AFTER)
        report_stuck("supervisor", self.host, os.getpid(), stuck)
        for group in list(self.cluster_groups):
            proctree.kill_group(group)
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, *sys.argv])

    # -------------------------------------------------------------- lifecycle

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        proctree.become_subreaper()
        threading.Thread(target=run_reaper, args=(self.stop, self.host), name="holder-reaper", daemon=True).start()
        if self.run_dispatcher:
            self._start_dispatcher()
        for child in self.children:
            self._start(child)
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        logger.info("qcluster supervisor %s running queues %s%s", os.getpid(), ", ".join(self.queues),
                    " with dispatcher" if self.run_dispatcher else "")
        while not self.stop.is_set():
            self.progress.beat()
            for child in self.children:
                self._watch(child)
            self._reap_orphans()
            self.stop.wait(0.5)
        self._shutdown()
        if self.dispatcher_thread:
            self.dispatcher_thread.join(timeout=10)
        logger.info("qcluster supervisor %s stopped", os.getpid())
        return 0

    def _on_signal(self, signum, frame):
        if not self.stop.is_set():
            logger.info("qcluster supervisor got %s: stopping (grace %s s)", signal.Signals(signum).name, self.grace)
        self.stop.set()

    def _start(self, child: Child) -> None:
        env = {**os.environ, "Q_CLUSTER_NAME": child.queue, proctree.SUPERVISOR_ENV: str(os.getpid())}
        child.process = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "jobs_cluster"],
            env=env, start_new_session=True,
        )
        self.cluster_groups.add(child.process.pid)  # its own session: group id = its pid
        child.started_at = time.monotonic()
        child.holders = {}
        child.backlog_since = None
        logger.info("started %s cluster (pid %s)", child.queue, child.process.pid)

    def _watch(self, child: Child) -> None:
        self._repush_lost_wakeups(child)
        proc = child.process
        if proc is not None and not proctree.exited_unreaped(proc.pid):
            self._note_tree(child)
            if time.monotonic() - child.started_at > 60:
                child.restarts = 0
            if self._wedged(child):
                self._kill_cluster(child)
            return
        now = time.monotonic()
        if proc is not None:
            # Its main process exited (its pid is not reaped yet, so its process group id
            # cannot be reused): whatever is left of the group goes with it.
            proctree.kill_group(proc.pid)
            proc.wait()
            child.died_at, child.dead_pgid = timezone.now(), proc.pid
            # Died on its own: the local reaper re-runs its jobs (their holders are gone).
            # Killed by a signal (OOM killer, an operator) or exited 0 (its sentinel died):
            # back at once. An error exit (bad code or config) restarts with a growing
            # delay, so a crash loop cannot spin.
            if proc.returncode <= 0:
                delay = RESTART_DELAY_MIN
            else:
                delay = min(2 ** child.restarts, RESTART_DELAY_MAX)
            logger.error("%s cluster (pid %s) exited with %s; restarting in %.0f s", child.queue, proc.pid,
                         proc.returncode, delay)
            child.process = None
            child.restarts += 1
            child.next_start = now + delay
        if now >= child.next_start:
            self._start(child)

    def _repush_lost_wakeups(self, child: Child) -> None:
        """Once the dead cluster's group is gone (so no dying pusher can take them again),
        re-push the wake-ups it may have held; on failure the dispatcher's repush_lost does
        it later."""
        if child.died_at is None or _group_alive(child.dead_pgid):
            return
        from jobs.dispatcher import repush_after_cluster_death

        workers = settings.JOBS_QUEUES.get(child.queue, 1)
        try:
            # Its prefetch (2 x workers), one in flight per worker, and a margin.
            repush_after_cluster_death(child.queue, before=child.died_at + timedelta(seconds=1),
                                       limit=3 * workers + 5)
        except Exception:
            logger.warning("could not re-push %s wake-ups after its cluster died; the dispatcher will",
                           child.queue, exc_info=True)
            from django.db import close_old_connections

            close_old_connections()
        child.died_at = None

    def _note_tree(self, child: Child) -> None:
        # Only the live tree: a dead holder's job is the reaper's (jobs/reaper.py).
        child.holders = {pid: child.holders.get(pid) or proctree.holder_id(pid) for pid in _tree(child.process.pid)}

    def _wedged(self, child: Child) -> bool:
        """Alive, its queue's list holding wake-ups for JOBS_STALL_AFTER, and in that time no
        claim by this cluster and no job running on it: it takes nothing from the list (or
        takes wake-ups and never runs them)."""
        bound = settings.JOBS_STALL_AFTER
        now = time.monotonic()
        try:
            if broker.queue_depth(child.queue) == 0 or services.is_queue_paused(child.queue):
                child.backlog_since = None
                return False
            if child.backlog_since is None:
                child.backlog_since = now
            if now - max(child.backlog_since, child.started_at) < bound:
                return False
            last = progress.last_claim_at(child.queue, f"{self.host}:{child.process.pid}")
            if last is not None and time.time() - last < bound:
                return False
            mine = set(child.holders.values())
            if Job.objects.filter(state=JobState.ACTIVE, worker__in=mine).exists():
                return False  # busy with long jobs, not wedged
        except Exception:
            from django.db import close_old_connections

            logger.debug("wedge check for %s failed", child.queue, exc_info=True)
            close_old_connections()
            return False  # Redis or MySQL away: no restart on guesswork
        logger.error("%s cluster (pid %s) is wedged: wake-ups waiting for %.0f s, no claim, no job running; "
                     "restarting it", child.queue, child.process.pid, now - child.backlog_since)
        progress.report_wedged(child.queue, self.host, child.process.pid,
                               {"waiting_s": round(now - child.backlog_since, 1)})
        return True

    def _kill_cluster(self, child: Child) -> None:
        proctree.kill_group(child.process.pid)
        child.process.wait(timeout=10)
        child.died_at, child.dead_pgid = timezone.now(), child.process.pid
        child.process = None
        child.next_start = 0.0  # at once: it did not crash, it stopped working

    def _reap_orphans(self) -> None:
        """As subreaper, processes orphaned anywhere below us become our children. One still
        in a cluster's process group belonged to that cluster: kill it. One that left the
        group (a daemon that called setsid, e.g. the embedded redis-server started by a
        worker) is not ours to kill: only reaped once it exits."""
        mains = {c.process.pid for c in self.children if c.process is not None}
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for p in children:
            if p.pid in mains:
                continue
            try:
                zombie = p.status() == psutil.STATUS_ZOMBIE
                ours = os.getpgid(p.pid) in self.cluster_groups
                what = " ".join(p.cmdline()[:4]) if not zombie else "zombie"
                if ours and not zombie:
                    p.kill()
                    logger.warning("killed orphaned process %s (%s)", p.pid, what)
            except (psutil.Error, ProcessLookupError):
                pass
            try:
                os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        # Forget the groups of clusters that are gone, whole (bounded by the live ones).
        self.cluster_groups = {g for g in self.cluster_groups if _group_alive(g)}

    def _shutdown(self) -> None:
        running = [c for c in self.children if c.process is not None and not proctree.exited_unreaped(c.process.pid)]
        for child in running:
            self._note_tree(child)
            try:
                os.kill(child.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(not proctree.exited_unreaped(c.process.pid) for c in running):
            for child in running:
                if not proctree.exited_unreaped(child.process.pid):
                    self._note_tree(child)
            time.sleep(0.2)
        killed: list[str] = []
        for child in running:
            if not proctree.exited_unreaped(child.process.pid):
                self._note_tree(child)
                logger.warning("%s cluster did not stop within %s s: killing it", child.queue, self.grace)
                killed += list(child.holders.values())
            # Drained or not, nothing of its group may stay behind (its main process is
            # not reaped yet, so the group id is still its own).
            proctree.kill_group(child.process.pid)
            child.process.wait(timeout=10)
        # Orphans re-parented to us (we are their subreaper): kill and reap until none is left.
        for _ in range(50):
            self._reap_orphans()
            if not self.cluster_groups:  # every group we started is gone, whole
                break
            time.sleep(0.1)
        if killed:
            released = services.jobs_release_workers(killed)
            logger.warning("released %d interrupted job(s) for another run", released)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


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
