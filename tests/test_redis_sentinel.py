"""Redis Sentinel: every client finds the master through the sentinels and follows a
failover. Real processes: a master, a replica and three sentinels (down-after 1 s) on
private ports, a real qcluster; the master is SIGKILLed while news falls due and analytics
events flow."""

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from analytics.ingest import STREAM_KEY, NotReplicated, record_event, record_events
from analytics.services import GROUP
from analytics.models import RawEvent
from jobs.models import Job, JobState
from news.models import News, NewsStatus
from tests.conftest import ROOT, wait_for
from news.factories import NewsFactory
from tests.redis_servers import SentinelSet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

BASE_PORT = 16710  # master 16710, replica 16711, sentinels 16720-16722


@pytest.fixture
def sentinels(tmp_path):
    servers = SentinelSet(tmp_path, BASE_PORT)
    yield servers
    servers.stop()


@pytest.fixture
def use_sentinels(settings, sentinels):
    """This test process's clients on the sentinels' master too (db 0 of the private servers)."""
    from nextevent.redis import get_redis

    settings.REDIS = {**settings.REDIS, "db": 0}
    settings.REDIS_SENTINEL = {"sentinels": [("127.0.0.1", s.port) for s in sentinels.sentinels],
                               "master": "mymaster", "password": None}
    get_redis.cache_clear()
    yield sentinels
    get_redis.cache_clear()


def sentinel_env(servers, **extra):
    # REDIS_HOST/PORT point where nothing listens: with sentinels set, no client may use them.
    return {"REDIS_SENTINELS": servers.env_value, "REDIS_DB": "0", "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": "16799", **extra}


class EventProducer(threading.Thread):
    """Records one analytics event every ~2 ms, each with its own user_id "s<seq>"; keeps which
    were acknowledged (and when) and which were refused with an error."""

    def __init__(self, news_ids):
        super().__init__(daemon=True)
        self.news_ids, self.stop_flag = news_ids, threading.Event()
        self.acked: dict[str, float] = {}
        self.refused: dict[str, float] = {}

    def run(self):
        seq = 0
        try:
            while not self.stop_flag.is_set() and seq < 100_000:
                user = f"s{seq}"
                try:
                    record_event(news_id=self.news_ids[seq % len(self.news_ids)], event_type="view", user_id=user)
                    self.acked[user] = time.time()
                except Exception:  # noqa: BLE001 - a refused event: the caller knows and would retry
                    self.refused[user] = time.time()
                    time.sleep(0.05)
                seq += 1
                time.sleep(0.002)
        finally:
            connection.close()


def test_master_killed_news_published_no_job_lost_and_event_loss_measured(use_sentinels, start_cluster):
    servers = use_sentinels
    start_cluster(queues=["news", "analytics"], env=sentinel_env(
        servers, JOBS_REPUSH_AFTER="2", ANALYTICS_BATCH_THRESHOLD="300", ANALYTICS_CLAIM_IDLE_SECONDS="2"))
    servers.wait_replica_known()
    now = timezone.now()
    # Due every 0.5 s from 2 s on: some before, some during, some after the failover.
    items = [NewsFactory(status=NewsStatus.SCHEDULED, scheduled_at=now + timedelta(seconds=2 + i * 0.5))
             for i in range(30)]
    producer = EventProducer([n.pk for n in items])
    producer.start()
    time.sleep(4)
    killed_at = time.time()
    servers.master.kill()
    wait_for(lambda: servers.master_port() == servers.replica.port, 60, 0.1, "the sentinels to promote the replica")
    promoted_at = time.time()
    time.sleep(5)  # events keep flowing to the new master
    producer.stop_flag.set()
    producer.join(30)

    # Every due news item is published, once, by a completed job.
    wait_for(lambda: News.objects.filter(pk__in=[n.pk for n in items], status=NewsStatus.PUBLISHED).count() == 30,
             120, 0.5, "every due news item to be published after the failover")
    jobs = Job.objects.filter(job_type="news:scheduled_publisher", subject__in=[f"news:{n.pk}" for n in items])
    wait_for(lambda: jobs.filter(state=JobState.COMPLETED).count() == 30, 60, 0.5, "the 30 publishing jobs to complete")
    assert not Job.objects.filter(state=JobState.DEAD).exists()

    # Drain the buffer: a final batch on the new master counts what is left.
    from analytics.ingest import enqueue_threshold_batch

    enqueue_threshold_batch(0, reason="test")
    client = servers.replica.client()

    def drained():
        try:
            pending = client.xpending(STREAM_KEY, GROUP)["pending"] if client.exists(STREAM_KEY) else 0
            return client.xlen(STREAM_KEY) == 0 and pending == 0 and not Job.objects.filter(
                job_type="news:analytics", state__in=[JobState.PENDING, JobState.ACTIVE, JobState.SCHEDULED,
                                                      JobState.RETRY]).exists()
        except Exception:  # noqa: BLE001 - the group may not exist yet
            return False

    wait_for(drained, 120, 0.5, "the analytics buffer to be counted")
    counted = Counter(RawEvent.objects.filter(user_id__startswith="s").values_list("user_id", flat=True))
    lost = {u: t for u, t in producer.acked.items() if u not in counted}
    twice = [u for u, c in counted.items() if c > 1]
    refused_times = sorted(producer.refused.values())
    print(f"\nfailover: promoted {promoted_at - killed_at:.1f} s after SIGKILL; events acknowledged "
          f"{len(producer.acked)}, refused with an error {len(producer.refused)}"
          + (f" (from {refused_times[0] - killed_at:+.2f} s to {refused_times[-1] - killed_at:+.2f} s)"
             if refused_times else "")
          + f"; acknowledged but lost {len(lost)}"
          + (f" (acknowledged {min(lost.values()) - killed_at:+.3f} s to {max(lost.values()) - killed_at:+.3f} s)"
             if lost else "")
          + f"; counted twice {len(twice)}; refused events found counted "
            f"{sum(1 for u in producer.refused if u in counted)}")
    assert not twice
    # What can be lost: only events acknowledged by the master just before it died (not yet
    # replicated). Nothing acknowledged after the kill can be lost.
    assert all(t <= killed_at + 0.01 for t in lost.values()), lost
    assert all(t >= killed_at - 1.0 for t in lost.values()), lost
    # Events really flowed before and after the failover (not a test that measured nothing).
    assert len(producer.acked) > 500 and max(producer.acked.values()) > promoted_at
    assert min(producer.acked.values()) < killed_at


def test_wait_turns_an_unreplicated_loss_into_an_error(use_sentinels, settings):
    servers = use_sentinels
    servers.wait_replica_known()
    news_id = 1  # ingest does not look the item up

    # Cost of WAIT while healthy: same calls with and without it.
    def rate(n, fn):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return n / (time.perf_counter() - started)

    batch = [{"news_id": news_id, "event_type": "view", "user_id": "bench"}] * 1000
    plain = (rate(300, lambda: record_event(news_id=news_id, event_type="view", user_id="bench")),
             rate(20, lambda: record_events(batch)) * 1000)
    settings.ANALYTICS_WAIT_REPLICAS, settings.ANALYTICS_WAIT_TIMEOUT_MS = 1, 100
    waited = (rate(300, lambda: record_event(news_id=news_id, event_type="view", user_id="bench")),
              rate(20, lambda: record_events(batch)) * 1000)
    print(f"\ningest events/s, single / 1,000 per call: without WAIT {plain[0]:.0f} / {plain[1]:.0f}; "
          f"with WAIT 1 replica {waited[0]:.0f} / {waited[1]:.0f}")

    # The replica stops receiving (as when it lags); the master keeps acknowledging.
    servers.replica.signal(signal.SIGSTOP)
    settings.ANALYTICS_WAIT_REPLICAS = 0
    silent = [f"a{i}" for i in range(20)]
    for user in silent:
        record_event(news_id=news_id, event_type="view", user_id=user)  # acknowledged
    settings.ANALYTICS_WAIT_REPLICAS = 1
    with pytest.raises(NotReplicated, match="confirmed by 0 of 1 replica"):
        record_event(news_id=news_id, event_type="view", user_id="w0")
    with pytest.raises(NotReplicated, match="1000 event"):
        record_events(batch)

    servers.master.kill()
    servers.replica.signal(signal.SIGCONT)
    wait_for(lambda: servers.master_port() == servers.replica.port, 60, 0.1, "the replica to be promoted")
    users = {fields[b"user_id"].decode() for _, fields in servers.replica.client().xrange(STREAM_KEY)
             if b"user_id" in fields}
    # Without WAIT the 20 acknowledged events are gone and nobody was told.
    assert not users & set(silent)
    # With WAIT the caller was told (NotReplicated, 503 over HTTP) and could retry.
    assert "w0" not in users
    # No replica is left to confirm: with WAIT on, ingest says so until one rejoins.
    with pytest.raises(NotReplicated):
        record_event(news_id=news_id, event_type="view", user_id="w1")
    settings.ANALYTICS_WAIT_REPLICAS = 0
    record_event(news_id=news_id, event_type="view", user_id="after")
    assert servers.replica.client().xlen(STREAM_KEY) > 0


def manage(args, env, timeout=60):
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_sentinel_settings_stop_start_up_with_one_line(cluster_env, sentinels):
    result = manage(["check"], {**cluster_env, "REDIS_SENTINELS": "127.0.0.1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: REDIS_SENTINELS must be comma-separated host:port, got '127.0.0.1' in '127.0.0.1'"]

    result = manage(["qcluster", "--no-sync-schedules"],
                    {**cluster_env, **sentinel_env(sentinels), "REDIS_SENTINEL_MASTER": "nosuch"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No master found for 'nosuch'" in lines[0] and "REDIS_SENTINEL_MASTER" in lines[0], lines

    result = manage(["qcluster", "--no-sync-schedules"],
                    {**cluster_env, "REDIS_SENTINELS": "127.0.0.1:16798,127.0.0.1:16799", "REDIS_DB": "0"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_SENTINELS (are the sentinels up?)" in lines[0], lines


def test_all_sentinels_down_readyz_says_so_and_recovers(use_sentinels, client, settings):
    servers = use_sentinels
    settings.METRICS_TOKEN = "t0ken"
    auth = {"HTTP_AUTHORIZATION": "Bearer t0ken"}

    def redis_check():
        body = client.get("/readyz", **auth).json()
        return body["checks"]["redis"]

    assert redis_check()["ok"] is True
    for s in servers.sentinels:
        s.stop()
    down = redis_check()
    assert down["ok"] is False and "No master found for 'mymaster'" in down["error"], down
    for s in servers.sentinels:
        s.restart().wait_ready()
    wait_for(lambda: redis_check()["ok"] is True, 30, 0.2, "/readyz to see Redis again through the sentinels")


def test_a_separate_analytics_redis_is_found_through_the_sentinels_and_followed_after_failover(settings, tmp_path):
    """ANALYTICS_REDIS_SENTINEL_MASTER: the analytics buffer asks the project's sentinels for
    its own master, and after that master dies its events go to the promoted replica, as the
    main Redis's do. The main Redis stays where it is."""
    from analytics import buffer
    from nextevent.config import ConfigError, Env, analytics_redis_config

    servers = SentinelSet(tmp_path, BASE_PORT + 30, master="analytics")
    try:
        servers.wait_replica_known()
        env = Env({"REDIS_SENTINELS": servers.env_value, "ANALYTICS_REDIS_SENTINEL_MASTER": "analytics",
                   "ANALYTICS_REDIS_DB": "2"})
        settings.ANALYTICS_REDIS = analytics_redis_config(env)
        settings.REDIS_SENTINEL = {"sentinels": [("127.0.0.1", s.port) for s in servers.sentinels],
                                   "master": "mymaster", "password": None}
        buffer._sentinel_client.cache_clear()
        record_event(news_id=1, event_type="view", user_id="before")
        assert servers.master.client(db=2).xlen(STREAM_KEY) == 1

        servers.master.kill()
        wait_for(lambda: servers.master_port() == servers.replica.port, 60, 0.1, "the replica to be promoted")
        wait_for(lambda: _recorded(lambda: record_event(news_id=1, event_type="view", user_id="after")), 30, 0.2,
                 "an event to be accepted after the failover")
        # The replicated event and the one written after the failover, on the promoted replica.
        assert servers.replica.client(db=2).xlen(STREAM_KEY) >= 2
    finally:
        buffer._sentinel_client.cache_clear()
        servers.stop()
    with pytest.raises(ConfigError, match="ANALYTICS_REDIS_SENTINEL_MASTER needs REDIS_SENTINELS"):
        analytics_redis_config(Env({"ANALYTICS_REDIS_SENTINEL_MASTER": "analytics"}))
    with pytest.raises(ConfigError, match="exclude each other"):
        analytics_redis_config(Env({"ANALYTICS_REDIS_SENTINEL_MASTER": "analytics", "REDIS_SENTINELS": "h:1",
                                    "ANALYTICS_REDIS_URL": "redis://h:6379/0"}))


def _recorded(call) -> bool:
    try:
        call()
        return True
    except Exception:  # noqa: BLE001 - refused while the failover settles: the caller retries
        return False
