"""/healthz, /readyz and /metrics over HTTP (Django's test client) against the real ledger
and Redis. Redis outages use a throwaway redis-server of the test's own, never the shared one."""

import socket
import subprocess
import time
from datetime import timedelta

import pytest
import redis as redis_lib
from django.contrib.auth.models import Permission, User
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import Heartbeat, JobState
from nextevent.redis import get_redis
from tests.ops_support import make_job
from tests.conftest import slack

pytestmark = pytest.mark.django_db


class ThrowawayRedis:
    """A redis-server of this test's own on a free port, to stop and start at will."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis_lib.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis_lib.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def own_redis(settings):
    server = ThrowawayRedis()
    server.start()
    settings.REDIS = {"host": "127.0.0.1", "port": server.port, "db": 0, "socket_connect_timeout": 1}
    get_redis.cache_clear()
    yield server
    server.stop()
    get_redis.cache_clear()


@pytest.fixture(autouse=True)
def no_metrics_cache(settings):
    settings.METRICS_CACHE_SECONDS = 0
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = True  # the tests below read /metrics without a token


def fresh_health(age: float = 1.0):
    Heartbeat.objects.update_or_create(name="health", defaults={
        "kind": "health", "seen_at": timezone.now() - timedelta(seconds=age), "details": {"ok": True, "problems": []}})


# ---------------------------------------------------------------- /healthz and /readyz


def test_healthz_says_the_process_is_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_503_while_redis_is_down_and_200_after(client, own_redis):
    fresh_health()
    assert client.get("/readyz").status_code == 200

    own_redis.stop()
    started = time.monotonic()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "fail", "checks": {"database": "ok", "redis": "fail",
                                                            "health_heartbeat": "ok", "dead_jobs": "ok",
                                                            "queues_moving": "fail"}}
    assert time.monotonic() - started < slack(2)  # a probe must not hang on a dead Redis

    own_redis.start()
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


@pytest.mark.parametrize("age,expected", [(None, 503), (200, 503), (5, 200)])
def test_readyz_needs_a_recent_health_check(client, age, expected):
    if age is not None:
        fresh_health(age)
    response = client.get("/readyz")
    assert response.status_code == expected
    assert response.json()["checks"]["health_heartbeat"] == ("ok" if expected == 200 else "fail")


def test_readyz_is_503_when_dead_jobs_pass_the_threshold(client, settings):
    settings.READYZ_MAX_DEAD_JOBS = 2
    fresh_health()
    make_job(state=JobState.DEAD)
    make_job(state=JobState.DEAD)
    assert client.get("/readyz").status_code == 200
    make_job(state=JobState.DEAD)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["dead_jobs"] == "fail"


def test_readyz_details_need_the_token_or_a_staff_session_that_may_view_jobs(client, settings):
    settings.METRICS_TOKEN = "probe-token"
    fresh_health(3)
    assert client.get("/readyz").json()["checks"]["dead_jobs"] == "ok"

    detailed = client.get("/readyz", headers={"Authorization": "Bearer probe-token"}).json()["checks"]
    assert detailed["dead_jobs"] == {"ok": True, "count": 0, "max": settings.READYZ_MAX_DEAD_JOBS}
    assert 3 <= detailed["health_heartbeat"]["age_s"] < 10
    assert client.get("/readyz", headers={"Authorization": "Bearer wrong"}).json()["checks"]["redis"] == "ok"

    ops = User.objects.create_user("ops", is_staff=True)
    ops.user_permissions.add(Permission.objects.get(content_type__app_label="jobs", codename="view_job"))
    client.force_login(ops)
    assert client.get("/readyz").json()["checks"]["redis"] == {"ok": True}


# ---------------------------------------------------------------- /metrics


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, name: str, sample_name: str | None = None, **labels) -> float:
    matches = [s.value for s in fams[name].samples
               if s.name == (sample_name or name) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, fams[name].samples)
    return matches[0]


def test_metrics_report_the_ledger_by_queue_state_and_type(client):
    fresh_health(2)
    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", ago=600, duration=2, lateness=0.2)
    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", ago=1200, duration=40, lateness=3)
    for duration, lateness in ((0.03, 0.01), (0.3, 0.5), (3, 20)):
        make_job(state=JobState.COMPLETED, queue="default", ago=300, duration=duration, lateness=lateness)
    make_job(state=JobState.COMPLETED, queue="default", ago=2 * 3600)  # outside the hour
    make_job(state=JobState.PENDING, queue="default", ago=50)
    make_job(state=JobState.SCHEDULED, queue="news", job_type="news:scheduled_publisher")
    for _ in range(3):
        get_redis().xadd("nextevent:analytics:events", {"news_id": "1", "type": "view"})

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = families(response.content.decode())

    assert value(fams, "nextevent_jobs", queue="news", state="dead") == 2
    assert value(fams, "nextevent_jobs", queue="news", state="scheduled") == 1
    assert value(fams, "nextevent_jobs", queue="default", state="pending") == 1
    assert value(fams, "nextevent_jobs", queue="critical", state="active") == 0
    assert value(fams, "nextevent_jobs_processed_last_hour", queue="default", job_type="system:noop") == 3
    assert value(fams, "nextevent_jobs_failed_last_hour", queue="default", job_type="system:noop") == 0
    assert value(fams, "nextevent_jobs_processed_last_hour", queue="news", job_type="news:expiration") == 2
    assert value(fams, "nextevent_jobs_failed_last_hour", queue="news", job_type="news:expiration") == 2
    assert value(fams, "nextevent_jobs_processed_last_hour", queue="wechat", job_type="wechat:publishing") == 0

    noop = {"queue": "default", "job_type": "system:noop"}
    bucket = "nextevent_job_duration_seconds_bucket"
    assert fams["nextevent_job_duration_seconds"].type == "histogram"
    assert value(fams, "nextevent_job_duration_seconds", bucket, le="0.01", **noop) == 0
    assert value(fams, "nextevent_job_duration_seconds", bucket, le="0.05", **noop) == 1
    assert value(fams, "nextevent_job_duration_seconds", bucket, le="0.5", **noop) == 2
    assert value(fams, "nextevent_job_duration_seconds", bucket, le="5.0", **noop) == 3
    assert value(fams, "nextevent_job_duration_seconds", bucket, le="+Inf", **noop) == 3
    assert value(fams, "nextevent_job_duration_seconds_gsum", **noop) == pytest.approx(3.33, abs=0.01)
    late = "nextevent_job_lateness_seconds_bucket"
    assert value(fams, "nextevent_job_lateness_seconds", late, le="0.05", **noop) == 1
    assert value(fams, "nextevent_job_lateness_seconds", late, le="0.5", **noop) == 2
    assert value(fams, "nextevent_job_lateness_seconds", late, le="10.0", **noop) == 2
    assert value(fams, "nextevent_job_lateness_seconds", late, le="30.0", **noop) == 3
    news = {"queue": "news", "job_type": "news:expiration"}
    assert value(fams, "nextevent_job_duration_seconds", bucket, le="30.0", **news) == 1
    assert value(fams, "nextevent_job_duration_seconds", bucket, le="60.0", **news) == 2

    assert 50 <= value(fams, "nextevent_queue_oldest_pending_age_seconds", queue="default") < 80
    assert value(fams, "nextevent_queue_oldest_pending_age_seconds", queue="news") == 0
    assert value(fams, "nextevent_analytics_buffer_length") == 3
    assert value(fams, "nextevent_queue_depth", queue="default") == 0
    assert value(fams, "nextevent_queue_paused", queue="news") == 0
    assert value(fams, "nextevent_up", component="database") == 1
    assert value(fams, "nextevent_up", component="redis") == 1
    assert 2 <= value(fams, "nextevent_health_check_age_seconds") < 10
    assert value(fams, "nextevent_health_check_ok") == 1


def test_metrics_count_the_analytics_buffer_as_0_when_the_stream_is_missing(client):
    fams = families(client.get("/metrics").content.decode())
    assert value(fams, "nextevent_analytics_buffer_length") == 0
    assert value(fams, "nextevent_health_check_age_seconds") == float("inf")


def test_metrics_need_the_bearer_token_when_one_is_set(client, settings):
    settings.METRICS_TOKEN = "scrape-me"
    response = client.get("/metrics")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert response.status_code == 200 and "nextevent_jobs" in families(response.content.decode())


def test_metrics_are_closed_without_a_token_unless_made_public(client, settings):
    settings.METRICS_PUBLIC = False

    response = client.get("/metrics")

    assert response.status_code == 403
    assert b"METRICS_TOKEN" in response.content and b"METRICS_PUBLIC" in response.content
    settings.METRICS_PUBLIC = True
    assert client.get("/metrics").status_code == 200


def test_metrics_keep_reporting_the_ledger_while_redis_is_down(client, own_redis):
    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration")
    own_redis.stop()
    response = client.get("/metrics")
    assert response.status_code == 200
    fams = families(response.content.decode())
    assert value(fams, "nextevent_up", component="redis") == 0
    assert value(fams, "nextevent_up", component="database") == 1
    assert value(fams, "nextevent_jobs", queue="news", state="dead") == 1
    assert "nextevent_queue_depth" not in fams


def test_metrics_speak_openmetrics_when_asked(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")
