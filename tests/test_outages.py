"""MySQL and Redis outages through the project's own configuration: the processes get
DB_HOST/DB_PORT or REDIS_HOST/REDIS_PORT pointing at a proxy in front of the real server
(tests/outage.py), so the settings the project builds (connect timeouts, Redis retries, the
probes' own timeouts) decide what happens. Each outage comes in both forms: connections
refused, and a server that accepts and never answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.system import SYSTEM_NOOP
from tests.conftest import ROOT, slack, wait_for
from tests.outage import OutageProxy

pytestmark = pytest.mark.django_db(transaction=True)

READINESS = """
import json, time
from jobs.monitoring.views import readiness
t0 = time.monotonic()
ready, checks = readiness()
print(json.dumps({"ready": ready, "ok": {k: v["ok"] for k, v in checks.items()},
                  "errors": {k: v.get("error", "") for k, v in checks.items()}, "took": time.monotonic() - t0}))
"""


@pytest.fixture
def proxy_to():
    proxies = []

    def make(service: str) -> tuple[OutageProxy, dict]:
        if service == "mysql":
            db = connection.settings_dict
            proxy = OutageProxy("127.0.0.1" if db["HOST"] in ("", "localhost") else db["HOST"], int(db["PORT"] or 3306))
            env = {"DB_HOST": "127.0.0.1", "DB_PORT": str(proxy.port)}
        else:
            host = settings.REDIS.get("host", "localhost")
            proxy = OutageProxy("127.0.0.1" if host == "localhost" else host, int(settings.REDIS.get("port", 6379)))
            env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(proxy.port)}
        proxies.append(proxy)
        return proxy, env

    yield make
    for proxy in proxies:
        proxy.close()


def readiness_in_a_fresh_process(cluster_env, env) -> dict:
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", READINESS], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**cluster_env, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Upper bounds from the configuration: MySQL's connect_timeout (DB_CONNECT_TIMEOUT, 5 s)
# bounds a silent database; the readiness probe's own 1 s timeout bounds a silent Redis.
BOUND = {("mysql", "refused"): 2.0, ("mysql", "silent"): 8.0, ("redis", "refused"): 2.0, ("redis", "silent"): 3.0}


@pytest.mark.parametrize("service", ["mysql", "redis"])
@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_readiness_fails_fast_naming_the_component_that_is_down(service, failure, proxy_to, cluster_env):
    proxy, env = proxy_to(service)
    assert readiness_in_a_fresh_process(cluster_env, env)["ok"]["database" if service == "mysql" else "redis"]
    proxy.refuse() if failure == "refused" else proxy.go_silent()

    report = readiness_in_a_fresh_process(cluster_env, env)
    name, other = ("database", "redis") if service == "mysql" else ("redis", "database")
    assert report["ready"] is False and report["ok"][name] is False and report["ok"][other] is True, report
    assert report["errors"][name]
    assert report["took"] < slack(BOUND[(service, failure)]), report

    proxy.restore()
    assert readiness_in_a_fresh_process(cluster_env, env)["ok"][name]


@pytest.mark.cluster
@pytest.mark.parametrize("service", ["mysql", "redis"])
@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_the_engine_rides_out_an_outage_and_runs_what_came_due_meanwhile(service, failure, proxy_to,
                                                                         start_cluster):
    proxy, env = proxy_to(service)
    cluster = start_cluster(queues=["default"], env={**env, "JOBS_REPUSH_AFTER": "2"})
    before = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.SCHEDULED,
                                timeout=60, run_at=timezone.now())
    wait_for(lambda: Job.objects.filter(pk=before.pk, state=JobState.COMPLETED).exists(), 30, 0.1,
             "a job to run before the outage")

    proxy.refuse() if failure == "refused" else proxy.go_silent()
    # Written straight to the real database during the outage: due at once.
    during = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={"marker": "outage"},
                                state=JobState.SCHEDULED, timeout=60, run_at=timezone.now())
    time.sleep(6)  # the outage itself: the processes see it for this long
    assert Job.objects.get(pk=during.pk).state != JobState.COMPLETED
    log_during = cluster.log()
    proxy.restore()

    job = wait_for(lambda: Job.objects.filter(pk=during.pk, state=JobState.COMPLETED).first(), 60, 0.2,
                   f"the job due during the {service} outage to run after it")
    assert job.attempts == 1
    assert cluster.proc.poll() is None, "the supervisor must survive the outage"
    failures = log_during.count("dispatcher pass failed (")
    if failure == "refused" and service == "mysql":
        # Refused at once: the dispatcher backs off (0.5 s, 1 s, 1.5 s, ...) and logs only
        # the first three failures of a streak, not one line every 0.1 s.
        assert 1 <= failures <= 3, log_during[-3000:]
    elif service == "redis":
        # A Redis outage fails only the passes that touch Redis (a wake-up to push, the
        # re-push check every 2 s); the passes between succeed and end the streak, so each
        # failure is logged as "1 in a row": at most about one line per 2 s, not per 0.1 s.
        assert failures <= 6, log_during[-3000:]
    else:
        assert failures <= 3, log_during[-3000:]  # silent MySQL: passes wait, they do not fail


HEALTH = """
import json, time
from jobs.health import health_check
t0 = time.monotonic()
result = health_check()
print(json.dumps({"result": result, "took": time.monotonic() - t0}))
"""


@pytest.mark.parametrize("failure", ["refused", "silent"])
def test_the_health_check_reports_a_redis_outage_and_returns(failure, proxy_to, cluster_env):
    # The periodic health check (and the alert receivers it signals) must come back with
    # "redis: ..." and write its heartbeat, not hang the critical queue's worker.
    proxy, env = proxy_to("redis")
    proxy.refuse() if failure == "refused" else proxy.go_silent()
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", HEALTH], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={**cluster_env, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["result"].startswith("redis: "), report
    assert report["took"] < slack(8.0), report  # the check's own 5 s Redis timeout, then on
    from jobs.models import Heartbeat

    details = Heartbeat.objects.get(name="health").details
    assert details["ok"] is False and details["redis"].startswith("error: ") and details["database"] == "ok"


@pytest.mark.cluster
@pytest.mark.parametrize("service", ["mysql", "redis"])
def test_news_falling_due_across_a_blackholed_connection_is_published_on_time(service, proxy_to, start_cluster):
    """Every connection the engine has open to the server goes silent for good (no RST, no FIN:
    a failover moved the server's address, or its host died) while new connections get
    through. The read timeouts give the dead connections up; every item is published within
    30 s of its time and qcluster lives on."""
    from news.factories import ScheduledNewsFactory
    from news.models import News, NewsStatus

    proxy, env = proxy_to(service)
    cluster = start_cluster(queues=["news"], env=env)
    start = timezone.now()
    items = [ScheduledNewsFactory(scheduled_at=start + timedelta(seconds=3 + i * 0.5)) for i in range(40)]
    time.sleep(max(0.0, 8 - (timezone.now() - start).total_seconds()))
    proxy.blackhole()  # 8 s in: about ten items published, thirty still to come
    blackholed_at = timezone.now()

    def all_published():
        return News.objects.filter(pk__in=[n.pk for n in items], status=NewsStatus.PUBLISHED).count() == len(items)

    wait_for(all_published, slack(60), 0.2, f"every item to be published across the {service} blackhole")
    late = {n.pk: (n.published_at - n.scheduled_at).total_seconds()
            for n in News.objects.filter(pk__in=[n.pk for n in items])}
    assert max(late.values()) <= slack(30), sorted(late.items(), key=lambda kv: -kv[1])[:5]
    assert any(n.scheduled_at > blackholed_at for n in items)  # items really fell due after the blackhole
    assert cluster.proc.poll() is None, "qcluster must live through the blackhole"
    # One publishing job per item, each finished once (none left running or retried twice).
    jobs = Job.objects.filter(job_type="news:scheduled_publisher", created_at__gte=start)
    wait_for(lambda: jobs.filter(state=JobState.COMPLETED).count() == len(items), slack(30), 0.2,
             "every publishing job to be recorded completed")
    assert jobs.count() == len(items)
    print(f"{service} blackholed: latest publication {max(late.values()):.1f} s after its time")
