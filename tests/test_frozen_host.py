"""A frozen host: every process of one qcluster SIGSTOPped at once, as a paused VM or a
stalled container leaves them, while a second qcluster runs on another hostname
(`unshare --uts` gives each its own). A frozen host renews no lease and answers nothing, yet
its processes are alive: its own host's reaper cannot see it, only the lease running out
can. The other host takes its jobs over within JOBS_LEASE_SECONDS + 1 s (one reap pass) and
the claim's own latency; once the frozen one wakes up (SIGCONT) and finishes what it was
doing, nothing it writes moves the ledger, a WeChat article is still submitted once, and
analytics events are still counted once."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from datetime import timezone as dt_timezone

import psutil
import pytest
from django.db import OperationalError, connection, connections, transaction
from django.utils import timezone

from analytics.ingest import STREAM_KEY, record_events
from analytics.models import AppliedBatch, ApplyLock, DailyStat, RawEvent
from analytics.scheduling import NEWS_ANALYTICS
from analytics.services import GROUP
from jobs import scheduler
from jobs.models import Heartbeat, Job, JobState
from jobs.system import SYSTEM_NOOP
from nextevent.redis import get_redis
from news.factories import NewsFactory
from news.models import News
from news.services import news_publish
from tests.conftest import ROOT, ClusterProcess, slack, wait_for
from tests.wechat_fixtures import CALLBACK_TOKEN, fake_wechat, wechat_env  # noqa: F401
from wechat.models import ArticleState, WechatArticle
from wechat.scheduling import WECHAT_PUBLISHING

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

LEASE_SECONDS = 5
# A short lease renewed every second (the settings refuse a renewal slower than half of it).
LEASE = {"JOBS_LEASE_SECONDS": str(LEASE_SECONDS), "JOBS_HEARTBEAT_SECONDS": "1", "LOG_LEVEL": "INFO"}


# The dispatcher looks for expired leases once a second (jobs/dispatcher.py).
REAP_INTERVAL = 1.0


def takeover_bound() -> float:
    """Seconds from the freeze to the other host's claim: the lease runs out at most
    JOBS_LEASE_SECONDS after the freeze and a reap pass comes within REAP_INTERVAL (neither
    scaled: the engine's own bounds); forwarding, the wake-up and the claim that follow (about
    0.1 s here) get half a second, scaled by the test's slack."""
    return LEASE_SECONDS + REAP_INTERVAL + slack(0.5)


# ---------------------------------------------------------------- hosts


def _unshare_refusal() -> str | None:
    try:
        probe = subprocess.run(["unshare", "--uts", "hostname", "frozen-host-probe"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --uts cannot run here ({exc})"
    if probe.returncode != 0:
        return f"unshare --uts is not permitted here (needs root or CAP_SYS_ADMIN): {probe.stderr.strip()}"
    return None


class HostCluster(ClusterProcess):
    """`manage.py qcluster` under a hostname of its own. unshare and sh exec, so the pid is
    the supervisor's."""

    def __init__(self, host: str, args, env, log_path):
        self.host = host
        self.log_path = log_path
        self._log = open(log_path, "wb")
        command = [sys.executable, str(ROOT / "manage.py"), "qcluster", *args]
        self.proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *command],
                                     cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.frozen: list[psutil.Process] = []

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root] + root.children(recursive=True)
        except psutil.Error:
            return []

    def freeze(self) -> float:
        """SIGSTOP every process of the tree, collected first, in one pass; again for any
        process that appeared meanwhile (a worker being replaced) until none is left
        running. Returns the time of the freeze."""
        seen: dict[int, psutil.Process] = {}
        for _ in range(20):
            fresh = [p for p in self.tree() if p.pid not in seen]
            if not fresh:
                break
            for p in fresh:
                seen[p.pid] = p
            self.frozen = list(seen.values())
            for p in fresh:
                try:
                    p.send_signal(signal.SIGSTOP)
                except psutil.Error:
                    pass
        at = time.time()

        def all_stopped():
            return all(_status(p) in (psutil.STATUS_STOPPED, None) for p in self.frozen)

        wait_for(all_stopped, 5, 0.02, f"every process of {self.host} to be stopped")
        return at

    def thaw(self) -> float:
        for p in self.frozen + self.tree():
            try:
                p.send_signal(signal.SIGCONT)
            except psutil.Error:
                pass
        return time.time()

    def wait_dispatcher_pass(self, since: float) -> None:
        """Its dispatcher writes its heartbeat at the end of a pass (reap and re-push
        included), at once after a freeze longer than its 5 s beat."""
        def beat():
            return Heartbeat.objects.filter(kind="dispatcher", name__startswith=f"dispatcher:{self.host}:",
                                            seen_at__gt=datetime.fromtimestamp(since, dt_timezone.utc)).exists()

        wait_for(beat, 15, 0.1, f"a dispatcher pass on {self.host} after it woke up")

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))


def stale_completions(cluster: HostCluster) -> dict[int, str]:
    """How each first attempt that ran on `cluster` ended, from its log: its completion
    "written" or "refused" (by the claim fence: another worker holds the job now)."""
    log = cluster.log()
    seen = {int(i): "written" for i in re.findall(r"job completed job_id=(\d+) \S+ \S+ attempt=1 ", log)}
    seen.update({int(i): "refused" for i in re.findall(r"job (\d+) attempt 1 finished after losing its lease", log)})
    return seen


def _status(p: psutil.Process) -> str | None:
    try:
        return p.status()
    except psutil.Error:
        return None


@pytest.fixture
def start_host(cluster_env, tmp_path, request):
    """Start qclusters on hostnames of their own. Whatever happens in the test, each tree is
    woken (SIGCONT), stopped, and what is left of it killed."""
    refusal = _unshare_refusal()
    if refusal:
        pytest.skip(refusal)
    started: list[HostCluster] = []

    def start(host: str, *, queues: list[str], env: dict | None = None, wait: bool = True) -> HostCluster:
        cluster = HostCluster(host, ["--no-sync-schedules", "--queues", ",".join(queues)],
                              {**cluster_env, **LEASE, **(env or {})}, tmp_path / f"qcluster-{host}.log")
        started.append(cluster)
        if wait:
            cluster.wait_ready(queues)
        return cluster

    yield start
    for cluster in started:
        cluster.thaw()
    trees = {cluster: cluster.tree() for cluster in started}
    for cluster in started:
        if cluster.proc.poll() is None:
            cluster.proc.send_signal(signal.SIGTERM)
    for cluster, tree in trees.items():
        try:
            cluster.proc.wait(40)
        except subprocess.TimeoutExpired:
            pass
        for p in tree + cluster.frozen:  # never leave a stopped or orphaned process behind
            try:
                p.send_signal(signal.SIGCONT)
                p.kill()
            except psutil.Error:
                pass
        if cluster.proc.poll() is None:
            cluster.proc.wait(10)
        cluster._log.close()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for cluster in started:
            print(f"--- qcluster {cluster.host} ({cluster.pid}) log ---\n{cluster.log()[-6000:]}")


def assert_nothing_moves(woken: HostCluster, woke_at: float, snapshot) -> None:
    """Once the woken host's dispatcher has run again, `snapshot()` stays the same over two
    more reap passes of every dispatcher (one a second)."""
    woken.wait_dispatcher_pass(woke_at)
    before = snapshot()
    time.sleep(2.5)
    assert snapshot() == before


def on_host(host: str):
    return {"worker__startswith": f"{host}:"}


def ledger(job_ids) -> dict:
    fields = ("state", "attempts", "claims", "worker", "result", "started_at", "finished_at", "lease_expires_at",
              "errors", "last_error")
    return {row["id"]: row for row in Job.objects.filter(pk__in=job_ids).values("id", *fields)}


# ---------------------------------------------------------------- engine jobs


JOBS = 4
SLEEP = 20.0  # longer than host-b's start and the takeover: still running on host-a when it freezes


def test_a_frozen_host_s_jobs_are_taken_over_within_the_lease_and_its_wake_up_changes_nothing(start_host):
    four = {"JOBS_WORKERS_DEFAULT": str(JOBS)}
    a = start_host("host-a", queues=["default"], env=four)
    ids = [scheduler.enqueue(SYSTEM_NOOP, {"sleep": SLEEP, "marker": f"frozen-{i}"}) for i in range(JOBS)]
    wait_for(lambda: Job.objects.filter(pk__in=ids, state=JobState.ACTIVE, **on_host("host-a")).count() == JOBS,
             20, 0.05, f"all {JOBS} jobs to run on host-a")
    b = start_host("host-b", queues=["default"], env=four)
    assert Job.objects.filter(pk__in=ids, state=JobState.ACTIVE, attempts=1, **on_host("host-a")).count() == JOBS, \
        "the jobs finished before host-b was up: the machine is too slow for SLEEP"

    frozen_at = a.freeze()
    time.sleep(1)  # a renewal sent just before the freeze is written by now: the leases are final
    held = ledger(ids)

    def taken_over():
        rows = ledger(ids)
        return rows if all(r["attempts"] == 2 and r["worker"].startswith("host-b:") for r in rows.values()) else None

    rows = wait_for(taken_over, takeover_bound() + 5, 0.05, "host-b to take every frozen job over")
    took = sorted(round(r["started_at"].timestamp() - frozen_at, 2) for r in rows.values())
    after_lease = sorted(round((r["started_at"] - held[i]["lease_expires_at"]).total_seconds(), 2)
                         for i, r in rows.items())
    print(f"engine jobs: taken over {took} s after the freeze, {after_lease} s after their leases ran out "
          f"(bound {takeover_bound()} s after the freeze)")
    assert max(took) <= takeover_bound(), took
    for job_id, row in rows.items():
        # Seen by the lease only: host-a's processes are alive, its own reaper saw nothing.
        [lost] = row["errors"]
        assert lost["worker"] == held[job_id]["worker"] and lost["error"].startswith("worker lost: lease expired")

    # Woken while host-b still runs them: each stale worker finishes its sleep and tries to
    # complete its attempt; the claim fence refuses it (the row is active, claim 2 not 1).
    woke_at = a.thaw()
    def every_stale_attempt_ended():
        seen = stale_completions(a)
        return seen if set(seen) >= set(ids) else None

    def all_completed():
        rows = ledger(ids)
        return rows if all(r["state"] == JobState.COMPLETED for r in rows.values()) else None

    outcomes = wait_for(every_stale_attempt_ended, 30, 0.2, "host-a's stale workers to finish their attempts")
    assert {i: outcomes[i] for i in ids} == {i: "refused" for i in ids}
    done = wait_for(all_completed, SLEEP + 20, 0.1, "host-b to complete every job")
    for job_id, row in done.items():
        # What host-b wrote: its whole run, its result, attempt 2.
        assert (row["attempts"], row["claims"], row["result"]) == (2, 2, f"frozen-{ids.index(job_id)}")
        assert row["worker"].startswith("host-b:") and len(row["errors"]) == 1
        assert (row["finished_at"] - row["started_at"]).total_seconds() >= SLEEP, row
    # Host-a is awake, its attempts are over, its dispatcher runs again: nothing changes any
    # more, and each job completed once, on host-b.
    assert_nothing_moves(a, woke_at, lambda: ledger(ids))
    assert ledger(ids) == done
    for job_id in ids:
        assert b.log_count(rf"job completed job_id={job_id} ") == 1
        assert a.log_count(rf"job completed job_id={job_id} ") == 0
        marker = ids.index(job_id)
        assert [r.decode() for r in get_redis().lrange(f"nextevent:noop:frozen-{marker}", 0, -1)] == [
            f"{job_id}:1", f"{job_id}:2"]


# ---------------------------------------------------------------- a WeChat submit


KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"
SUBMIT_ANSWER_DELAY = 4  # WeChat accepts at once and answers late: the answer reaches a frozen host
PUBLISH_SECONDS = 16  # still publishing when the frozen host wakes up (about 8 s after its freeze)


@pytest.fixture
def wechat(fake_wechat, live_server, settings):
    """The fake pushing PUBLISHJOBFINISH, encrypted, to the live server's callback URL."""
    settings.WECHAT_ENCODING_AES_KEY = KEY
    fake_wechat.callback_url, fake_wechat.callback_token = f"{live_server.url}/wechat/callback", CALLBACK_TOKEN
    fake_wechat.callback_mode, fake_wechat.encoding_aes_key = "safe", KEY
    return fake_wechat


def submits(fake) -> int:
    return fake.count("freepublish/submit")


def test_a_frozen_host_holding_a_wechat_submit_is_taken_over_and_the_article_is_submitted_once(start_host,
                                                                                               wechat):
    wechat.publish_seconds = PUBLISH_SECONDS
    wechat.script("freepublish/submit", ("delay", SUBMIT_ANSWER_DELAY))
    env = wechat_env(wechat, WECHAT_RECONCILE_MAX_CHECKS=30, WECHAT_RECONCILE_DELAY=1, WECHAT_POLL_MAX_INTERVAL=2,
                     WECHAT_ENCODING_AES_KEY=KEY)
    hosts = {name: start_host(name, queues=["wechat"], env=env, wait=False) for name in ("host-a", "host-b")}
    for cluster in hosts.values():
        cluster.wait_ready(["wechat"])
    news = NewsFactory(push_to_wechat=True)
    news_publish(news_id=news.pk)
    publishing = {"job_type": WECHAT_PUBLISHING, "subject": f"news:{news.pk}"}

    # The submit has reached WeChat, its answer is on the way: freeze the host that sent it.
    wait_for(lambda: wechat.publishes, 40, 0.01, "the submit to reach WeChat")
    holder = Job.objects.get(**publishing, state=JobState.ACTIVE)
    frozen_name = holder.worker.split(":")[0]
    [healthy_name] = set(hosts) - {frozen_name}
    frozen = hosts[frozen_name]
    frozen_at = frozen.freeze()
    assert WechatArticle.objects.get(news=news).state == ArticleState.SUBMITTING

    claimed = wait_for(lambda: Job.objects.filter(**publishing, claims__gte=2).first(), takeover_bound() + 5, 0.02,
                       f"{healthy_name} to take the publishing job over")
    took = round(claimed.started_at.timestamp() - frozen_at, 2)
    print(f"wechat submit: taken over by {healthy_name} {took} s after the freeze (bound {takeover_bound()} s)")
    assert (claimed.claims, claimed.worker.split(":")[0]) == (2, healthy_name), (claimed.claims, claimed.worker,
                                                                                 holder.worker, holder.claims)
    assert took <= takeover_bound()
    # It cannot know whether WeChat took the submit: it looks, and waits, without submitting.
    def searched_and_waiting():
        # Fail at a second submit, not at the timeout.
        assert submits(wechat) == 1, \
            f"{healthy_name} submitted the article again: {wechat.calls_to('freepublish/submit')}"
        return Job.objects.filter(**publishing, state=JobState.SCHEDULED, claims__gte=2,
                                  waiting_reason__contains="not submitted again").exists()

    wait_for(searched_and_waiting, 20, 0.05, f"{healthy_name} to search the records and wait")
    assert submits(wechat) == 1 and WechatArticle.objects.get(news=news).state == ArticleState.CHECKING

    # The frozen host wakes, reads its late answer and records the publish_id; its attempt's
    # outcome (a snooze) is refused by the claim fence.
    woke_at = frozen.thaw()
    wait_for(lambda: frozen.log_count(rf"news {news.pk} draft \S+ submitted as publish") == 1, 20, 0.1,
             f"{frozen_name}'s stale worker to get its answer")
    article = wait_for(lambda: WechatArticle.objects.filter(news=news, state=ArticleState.PUBLISHED).first(),
                       PUBLISH_SECONDS + 20, 0.1, "the push to settle the article")
    job = wait_for(lambda: Job.objects.filter(**publishing, state=JobState.COMPLETED).first(), 30, 0.1,
                   "the publishing job to complete")
    [pub] = wechat.publishes.values()
    assert article.publish_id == str(pub["publish_id"]) and article.article_url == pub["urls"][0]
    seen = {"submits": submits(wechat), "publications": len(wechat.publishes), "drafts in the box": len(wechat.drafts)}
    assert seen == {"submits": 1, "publications": 1, "drafts in the box": 0}
    # The frozen host's attempt is the lost one; once awake it is a host like any other and
    # may run the job's last, idle, step itself.
    assert job.errors[0]["worker"] == holder.worker and "lease expired" in job.errors[0]["error"]
    assert Job.objects.filter(job_type=WECHAT_PUBLISHING).count() == 1
    assert_nothing_moves(frozen, woke_at, lambda: (list(WechatArticle.objects.filter(news=news).values()),
                                                   ledger([job.pk]), submits(wechat)))
    assert submits(wechat) == 1


# ---------------------------------------------------------------- an analytics batch


EVENTS, CHUNK = 1200, 500


def _pending_by_host() -> Counter:
    """Entries read and not yet acknowledged, by the host in the reading batch's consumer name."""
    try:
        rows = get_redis().xpending_range(STREAM_KEY, GROUP, "-", "+", EVENTS)
    except Exception:  # noqa: BLE001 - no group yet
        return Counter()
    return Counter(row["consumer"].decode().split(":")[0] for row in rows)


def waiting_for_apply_lock() -> int:
    """Statements of the test database on the apply lock in progress at the server: while
    the test holds the lock, each is waiting for it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND COMMAND = 'Query' "
                       "AND INFO LIKE %s", [connection.settings_dict["NAME"], f"UPDATE `{ApplyLock._meta.db_table}`%"])
        return cursor.fetchone()[0]


def apply_lock_held_elsewhere() -> bool:
    try:
        with transaction.atomic():
            ApplyLock.objects.select_for_update(nowait=True).get(name="apply")
    except OperationalError:
        return True
    return False


def assert_counted_once(events):
    day = timezone.localdate()
    expected = Counter((e["news_id"], day, e["event_type"]) for e in events)
    got = DailyStat.objects.values_list("news_id", "day", "event_type", "count")
    assert Counter({(n, d, t): c for n, d, t, c in got}) == expected
    for news in News.objects.all():
        assert (news.view_count, news.share_count, news.like_count) == tuple(
            expected[(news.pk, day, t)] for t in ("view", "share", "like"))
    stream_ids = list(RawEvent.objects.values_list("stream_id", flat=True))
    assert len(stream_ids) == len(set(stream_ids)) == len(events)


def counters() -> tuple:
    return (sorted(DailyStat.objects.values_list("news_id", "day", "event_type", "count")),
            sorted(News.objects.values_list("pk", "view_count", "share_count", "like_count")),
            RawEvent.objects.count(), AppliedBatch.objects.count())


@pytest.mark.usefixtures("clear_of_local_midnight")
def test_a_frozen_host_holding_an_analytics_batch_is_taken_over_and_every_event_is_counted_once(start_host):
    env = {"ANALYTICS_BATCH_CHUNK": str(CHUNK),
           # Entries idle this long are another batch's to take over: the frozen host's
           # are, well before the job's lease runs out.
           "ANALYTICS_CLAIM_IDLE_SECONDS": "2"}
    hosts = {name: start_host(name, queues=["analytics"], env=env, wait=False) for name in ("host-a", "host-b")}
    for cluster in hosts.values():
        cluster.wait_ready(["analytics"])
    news_ids = [NewsFactory().pk for _ in range(5)]
    events = [{"news_id": news_ids[i % 5], "event_type": ("view", "share", "like", "view")[i % 4],
               "user_id": f"u{i % 17}"} for i in range(EVENTS)]
    record_events(events)
    ApplyLock.objects.create(name="apply")

    # Another connection holds the apply lock while the batch reads its first chunk, so the
    # batch is caught mid-chunk: entries read, its chunk's transaction waiting for the lock.
    locked, release = threading.Event(), threading.Event()

    def hold_lock():
        try:
            with transaction.atomic():
                ApplyLock.objects.select_for_update().get(name="apply")
                locked.set()
                release.wait(60)
        finally:
            connections.close_all()

    holder_thread = threading.Thread(target=hold_lock)
    holder_thread.start()
    try:
        assert locked.wait(10)
        job_id = scheduler.enqueue(NEWS_ANALYTICS, {"reason": "frozen"})
        wait_for(lambda: sum(_pending_by_host().values()) == CHUNK, 30, 0.02, "the batch to read its first chunk")
        # Its chunk's statement is at the server, waiting: frozen later than its read and
        # earlier than its lock, it would hold entries and no lock (not this case).
        wait_for(lambda: waiting_for_apply_lock() == 1, 10, 0.02, "the batch's chunk to wait for the apply lock")
        holder = Job.objects.get(pk=job_id, state=JobState.ACTIVE)
        frozen_name = holder.worker.split(":")[0]
        [healthy_name] = set(hosts) - {frozen_name}
        frozen = hosts[frozen_name]
        frozen_at = frozen.freeze()
    finally:
        release.set()
        holder_thread.join(10)
    # The frozen batch now holds the apply lock (granted to its waiting statement), in a
    # transaction it cannot finish: the worst moment for everybody else.
    wait_for(apply_lock_held_elsewhere, 5, 0.05, f"{frozen_name}'s chunk to be granted the apply lock")
    assert _pending_by_host() == {frozen_name: CHUNK} and not AppliedBatch.objects.exists()

    claimed = wait_for(lambda: Job.objects.filter(pk=job_id, claims__gte=2).first(), takeover_bound() + 5, 0.02,
                       f"{healthy_name} to take the analytics job over")
    took = round(claimed.started_at.timestamp() - frozen_at, 2)
    print(f"analytics batch: taken over by {healthy_name} {took} s after the freeze (bound {takeover_bound()} s)")
    assert claimed.worker.startswith(f"{healthy_name}:") and took <= takeover_bound()
    # The new run takes the frozen batch's entries over, then waits for the lock it holds.
    wait_for(lambda: _pending_by_host() == {healthy_name: CHUNK}, 20, 0.05,
             f"{healthy_name}'s batch to take over the frozen batch's entries")
    assert RawEvent.objects.count() == 0

    # Awake, the frozen batch commits the chunk it holds, then the other one finds it
    # counted under the lock: both had the same 500 entries, they are counted once.
    woke_at = frozen.thaw()
    job = wait_for(lambda: Job.objects.filter(pk=job_id, state=JobState.COMPLETED).first(), 60, 0.1,
                   "the analytics job to complete")
    outcomes = wait_for(lambda: stale_completions(frozen), 30, 0.2, f"{frozen_name}'s stale batch to finish")
    assert outcomes == {job_id: "refused"}
    assert_counted_once(events)
    assert job.worker.startswith(f"{healthy_name}:") and job.errors[0]["worker"] == holder.worker
    # The job's run took the 500 over and found them counted by the woken batch.
    assert f"{CHUNK} taken over" in job.result and f"{CHUNK} already counted" in job.result, job.result
    assert sum(_pending_by_host().values()) == 0 and get_redis().xlen(STREAM_KEY) == 0
    assert_nothing_moves(frozen, woke_at, lambda: (counters(), ledger([job_id])))
    assert_counted_once(events)
