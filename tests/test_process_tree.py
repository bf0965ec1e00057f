"""Any process of qcluster may die: nothing leaks, nothing stalls, and a dead
worker's job runs again within 2 s. Real qcluster subprocesses, real MariaDB and Redis;
processes are killed with real SIGKILLs and watched through /proc (psutil)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import psutil
import pytest
from django.utils import timezone

from jobs import broker, progress, scheduler, services
from jobs.dispatcher import repush_lost
from jobs.system import SYSTEM_NOOP
from jobs.models import Job, JobState
from nextevent.redis import get_redis, queue_key
from news.factories import NewsFactory
from news.models import News, NewsStatus
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

# Whatever dies, what belonged to it is gone within this bound (the supervisor polls every
# 0.5 s; parent-death signals act at once). Generous for a loaded 2-core machine.
ORPHAN_BOUND = 3.0

FAST = {"JOBS_STALL_AFTER": "3", "JOBS_REPUSH_AFTER": "2", "JOBS_LEASE_SECONDS": "6",
        "JOBS_HEARTBEAT_SECONDS": "1", "JOBS_SHUTDOWN_GRACE": "5", "LOG_LEVEL": "WARNING"}

# Every process ever seen in a qcluster tree during this module: a later test (or run)
# asserts none of them is still alive, so no leak is carried from one run to the next.
EVER_SEEN: dict[tuple[int, float], str] = {}


def _alive(pid: int, ctime: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.create_time() == ctime and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def leftovers() -> list[str]:
    return [f"{pid} ({what})" for (pid, ctime), what in EVER_SEEN.items() if _alive(pid, ctime)]


class TreeWatch:
    """Samples the supervisor's descendants every 0.1 s. A process whose parent changed
    since first seen (its parent died: re-parented to init or to a subreaper) and that is
    still alive ORPHAN_BOUND s later is a violation."""

    def __init__(self, root: int):
        self.root = root
        self.known: dict[tuple[int, float], int] = {}
        self.orphan_since: dict[tuple[int, float], float] = {}
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self):
        with self._lock:
            self._sample()

    def _sample(self):
        try:
            for p in psutil.Process(self.root).children(recursive=True):
                try:
                    key = (p.pid, p.create_time())
                    if key not in self.known:
                        self.known[key] = p.ppid()
                        EVER_SEEN[key] = " ".join(p.cmdline()[1:3]) or p.name()
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        now = time.monotonic()
        for key, parent in list(self.known.items()):
            try:
                p = psutil.Process(key[0])
                if p.create_time() != key[1] or p.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(key[0])
                orphaned = p.ppid() != parent
            except psutil.Error:
                self.known.pop(key)
                self.orphan_since.pop(key, None)
                continue
            if orphaned:
                since = self.orphan_since.setdefault(key, now)
                if now - since > ORPHAN_BOUND and key not in {v[1] for v in self.violations}:
                    self.violations.append((f"{key[0]} ({EVER_SEEN.get(key)}) orphaned for > {ORPHAN_BOUND} s, "
                                            f"parent now {p.ppid()}", key))

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def assert_clean(self):
        assert not self.violations, [v[0] for v in self.violations]


def descendants(root: int) -> list[psutil.Process]:
    try:
        return psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return []


def assert_tree_gone_after_stop(cluster, watch: TreeWatch):
    assert cluster.stop(timeout=60) == 0, cluster.log()[-3000:]
    watch.stop()
    watch.assert_clean()
    # The supervisor has exited: nothing that ever belonged to it may still run.
    wait_for(lambda: not leftovers(), ORPHAN_BOUND, 0.1, "every process of the tree to be gone after stop")


@pytest.fixture(autouse=True)
def no_leak_from_before():
    assert not leftovers(), f"processes left from an earlier test: {leftovers()}"
    yield
    # A failed test must not leave its leaks running on the shared machine (each test has
    # already asserted that the tree was gone after stop).
    for (pid, ctime) in list(EVER_SEEN):
        if _alive(pid, ctime):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


# ---------------------------------------------------------------- random kills


def _due_news(n: int, spread: float) -> list[int]:
    start = timezone.now() + timedelta(seconds=1)
    return [NewsFactory(status=NewsStatus.SCHEDULED, scheduled_at=start + timedelta(seconds=spread * i / n)).pk
            for i in range(n)]


@pytest.mark.parametrize("run", [0, 1, 2])
def test_random_sigkills_and_a_redis_flush_lose_nothing_and_leave_nothing(start_cluster, run):
    rng = random.Random(1100 + run)
    cluster = start_cluster(queues=["news"], env=FAST)
    watch = TreeWatch(cluster.pid)
    ids = _due_news(60, 8.0)
    killed = []
    deadline = time.monotonic() + 10
    kills = 0
    while time.monotonic() < deadline:
        tree = descendants(cluster.pid)
        mains = [p for p in tree if p.ppid() == cluster.pid]
        if kills == 0 and mains:
            # Each run's first kill is structural (the cluster's main process, or its sentinel),
            # so every run exercises a whole sub-tree losing its parent.
            victim = mains[0] if run % 2 == 0 else next(iter(mains[0].children()), mains[0])
        elif tree:
            victim = rng.choice(tree)
        else:
            victim = None
        if victim is not None:
            try:
                killed.append(f"{victim.pid} {' '.join(victim.cmdline()[1:3])} ppid {victim.ppid()}")
                victim.kill()
            except psutil.Error:
                pass
        kills += 1
        if kills == 3:
            get_redis().flushdb()  # every wake-up in flight is lost
        time.sleep(2)

    def all_published():
        return News.objects.filter(pk__in=ids, status=NewsStatus.PUBLISHED).count() == len(ids)

    wait_for(all_published, 60, 0.5, f"all {len(ids)} news to be published after kills {killed}")
    assert_tree_gone_after_stop(cluster, watch)


# ---------------------------------------------------------------- each kind of process


def _roles(cluster_pid: int, workers: int) -> dict[str, psutil.Process]:
    """The news cluster's processes by role, right after (re)start: django-q2's sentinel
    spawns its workers, then the monitor, then the pusher (pids in that order)."""
    main = psutil.Process(cluster_pid).children()[0]
    sentinel = main.children()[0]
    kids = sorted(sentinel.children(), key=lambda p: p.pid)
    assert len(kids) == workers + 2, kids
    return {"main": main, "sentinel": sentinel, "worker": kids[0], "monitor": kids[workers],
            "pusher": kids[workers + 1]}


def _healthy(cluster, workers: int, not_main: int | None = None):
    def ok():
        try:
            mains = [p for p in psutil.Process(cluster.pid).children() if p.status() != psutil.STATUS_ZOMBIE]
            return len(mains) == 1 and mains[0].pid != not_main and mains[0].children() and \
                len(mains[0].children()[0].children()) == workers + 2
        except psutil.Error:
            return False
    wait_for(ok, 60, 0.2, "the news cluster to be whole again")


def test_a_kill_of_each_kind_of_process_leaves_no_orphan_and_the_queue_runs_again(start_cluster):
    cluster = start_cluster(queues=["news"], env=FAST)
    watch = TreeWatch(cluster.pid)
    old_main = None
    for kind in ["pusher", "monitor", "worker", "sentinel", "main", "several"]:
        _healthy(cluster, 2, old_main)
        # A fresh cluster for each kind, so spawn order still tells the roles apart.
        roles = _roles(cluster.pid, 2)
        if kind == "several":
            victims = [roles["worker"], roles["pusher"], roles["sentinel"]]
        else:
            victims = [roles[kind]]
        for v in victims:
            v.kill()
        # The queue runs again: a job enqueued now completes.
        job_id = services.job_create(job_type=SYSTEM_NOOP, payload={}, queue="news")
        wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.COMPLETED).exists(), 40, 0.1,
                 f"a news job to run after the {kind} was killed")
        # No orphan left now: none of this kill can still become a violation.
        watch.sample()
        wait_for(lambda: not watch.orphan_since, ORPHAN_BOUND + 1, 0.1, f"the orphans of the {kind} kill to go")
        watch.assert_clean()
        old_main = roles["main"].pid
        if kind in ("pusher", "monitor", "worker"):
            # It may have died holding a lock of the cluster's multiprocessing queues (the
            # worker killed here is idle, waiting in task_queue.get()): the cluster is
            # replaced whole rather than left to hang (jobs/cluster_guard.py).
            wait_for(lambda: not roles["main"].is_running(), 10, 0.1,
                     f"the cluster to be replaced after its {kind} died")
    assert_tree_gone_after_stop(cluster, watch)


# ---------------------------------------------------------------- dead worker: 2 s


def test_a_killed_worker_s_job_runs_again_within_2_s_though_its_lease_is_long(start_cluster):
    # A 60 s lease: only the host's own check of the holder process can explain a fast re-run.
    cluster = start_cluster(queues=["default"], env={"JOBS_LEASE_SECONDS": "60", "LOG_LEVEL": "WARNING"})
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 4, "marker": "pt-kill"})
    job = wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE).first(), 30, 0.05, "active")
    host, start, pid = job.worker.split(":")
    assert pid.isdigit() and start.isdigit() and int(start) > 0, job.worker
    os.kill(int(pid), signal.SIGKILL)
    killed = time.time()
    again = wait_for(lambda: Job.objects.filter(pk=job_id, attempts=2, state=JobState.ACTIVE).first()
                     or Job.objects.filter(pk=job_id, attempts=2, state=JobState.COMPLETED).first(), 30, 0.02,
                     "the second attempt")
    assert again.started_at.timestamp() - killed < 2.0
    job = wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.COMPLETED).first(), 30, 0.1, "completion")
    assert job.attempts == 2 and "is gone" in job.errors[0]["error"]  # the lost attempt counts
    cluster.stop()


# ---------------------------------------------------------------- stuck consumers


STUCK_CONSUMER = """
import sys, time, redis
r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), db=int(sys.argv[3]), password=sys.argv[4] or None)
held = []
while True:  # takes wake-ups and never runs them (bounded by the test killing it)
    item = r.blpop(sys.argv[5], timeout=1)
    if item:
        held.append(item)
    time.sleep(0.3)
"""


def test_a_stuck_consumer_and_a_wedged_cluster_do_not_stall_the_queue(start_cluster, settings):
    cluster = start_cluster(queues=["news"], env=FAST)
    watch = TreeWatch(cluster.pid)
    roles = _roles(cluster.pid, 2)
    wedged_main = roles["main"].pid
    # The cluster's pusher stops taking wake-ups (alive, holding what it took): wedged.
    os.kill(roles["pusher"].pid, signal.SIGSTOP)
    r = settings.REDIS
    stuck = subprocess.Popen([sys.executable, "-c", STUCK_CONSUMER, r.get("host", "127.0.0.1"),
                              str(r.get("port", 6379)), str(r.get("db", 0)), r.get("password") or "",
                              queue_key("news")], cwd=ROOT)
    try:
        ids = [services.job_create(job_type=SYSTEM_NOOP, payload={}, queue="news") for _ in range(40)]
        wait_for(lambda: Job.objects.filter(pk__in=ids, state=JobState.COMPLETED).count() == len(ids), 60, 0.2,
                 "every job to complete despite the stuck consumer and the wedged cluster")
    finally:
        stuck.kill()
        stuck.wait(10)
    # The wedged cluster was detected, reported and replaced.
    reports = progress.wedged_reports()
    assert any(rep["queue"] == "news" and rep["pid"] == wedged_main for rep in reports), reports
    assert psutil.Process(cluster.pid).children()[0].pid != wedged_main
    assert_tree_gone_after_stop(cluster, watch)


def run_jobs_command_capture(capsys, *args):
    from tests.ops_support import run_jobs_command

    code = run_jobs_command(*args)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_stalled_queue_gets_its_pending_jobs_pushed_again_even_with_a_non_empty_list(settings, client, capsys):
    settings.JOBS_REPUSH_AFTER = 1
    settings.JOBS_STALL_AFTER = 1
    old = timezone.now() - timedelta(seconds=5)
    job_id = services.job_create(job_type=SYSTEM_NOOP, payload={}, queue="news")
    Job.objects.filter(pk=job_id).update(dispatched_at=old)
    get_redis().delete(queue_key("news"))
    get_redis().rpush(queue_key("news"), b"held by a consumer that never runs it")
    # No claim recorded on a queue this deployment says it serves: stalled, and reported so...
    settings.READYZ_QUEUES = ["news"]
    assert progress.readiness_check()["stalled"] == ["news"]
    assert client.get("/readyz").json()["checks"]["queues_moving"] == "fail"
    code, out, _ = run_jobs_command_capture(capsys, "stats")
    assert "PROBLEM: news stalled" in out
    # ...and its old pending job is pushed again...
    assert repush_lost() == 1
    assert broker.queue_depth("news") == 2
    # ...at most once per JOBS_REPUSH_AFTER,
    assert repush_lost() == 0
    # and not while the queue is moving (a recent claim): the list is being consumed.
    Job.objects.filter(pk=job_id).update(dispatched_at=old)
    progress._last_note.clear()
    progress.note_claim("news")
    assert repush_lost() == 0
    assert progress.readiness_check()["ok"]


def test_a_supervisor_killed_outright_takes_its_whole_tree_along(start_cluster):
    cluster = start_cluster(queues=["news", "default"], env=FAST)
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 30})
    wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.ACTIVE).exists(), 30, 0.05, "the long job to run")
    watch = TreeWatch(cluster.pid)
    watch.sample()
    assert len(watch.known) >= 2 * 6  # two clusters: main, sentinel, pusher, monitor, 2 workers
    watch.stop()
    cluster.proc.kill()  # SIGKILL: no shutdown code runs in the supervisor
    cluster.proc.wait(10)
    # Not a drain of the running job: the tree goes with its supervisor, at once.
    wait_for(lambda: not leftovers(), ORPHAN_BOUND, 0.1, "every process of the tree to die with the supervisor")
    # qcluster started again on this host re-runs the job at once: its holder is gone.
    start_cluster(queues=["default"], env=FAST)
    job = wait_for(lambda: Job.objects.filter(pk=job_id, attempts=2, state=JobState.ACTIVE).first(), 30, 0.1,
                   "the job to run again")
    assert "is gone" in job.errors[-1]["error"]


def test_a_heartbeat_longer_than_half_the_lease_is_refused_at_start():
    # One late renewal must not cost a live worker its lease.
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "JOBS_LEASE_SECONDS": "6",
                                 "JOBS_HEARTBEAT_SECONDS": "4"})
    assert result.returncode == 2
    assert "JOBS_HEARTBEAT_SECONDS must be at most half of JOBS_LEASE_SECONDS" in result.stderr


def test_readyz_watches_only_the_queues_this_deployment_serves(settings, client):
    """Wake-ups waiting on a queue that no cluster of this deployment runs (never claimed from,
    no live cluster) do not fail readiness; the same backlog on a queue a cluster claimed from
    (its clusters died since) does, and READYZ_QUEUES names the watched queues outright."""
    settings.JOBS_STALL_AFTER = 1
    settings.READYZ_QUEUES = []
    get_redis().rpush(queue_key("analytics"), b"nobody here runs analytics")
    check = progress.readiness_check()
    assert check["ok"] and "analytics" not in check["watched"], check
    progress._last_note.clear()
    progress.note_claim("analytics")
    get_redis().hset(f"{progress.CLAIMS_PREFIX}:analytics", progress.cluster_id(), f"{time.time() - 60:.3f}")
    check = progress.readiness_check()
    assert check["stalled"] == ["analytics"] and "analytics" in check["watched"], check
    assert client.get("/readyz").json()["checks"]["queues_moving"] == "fail"
    settings.READYZ_QUEUES = ["news"]
    assert progress.readiness_check() == {"ok": True, "stalled": [], "watched": ["news"], "after_s": 1}
