"""Alerts from the 30-second health check, posted to a local webhook receiver (a real HTTP
server on 127.0.0.1): once per condition per ALERT_REPEAT_MINUTES across processes, never
breaking the health check, never logging the webhook's secret."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connection

from jobs.monitoring import alerts as monitoring_alerts
from jobs.models import Heartbeat, JobState
from nextevent.redis import get_redis
from tests.conftest import ROOT, slack
from tests.ops_support import make_job
from jobs.health import health_check, queue_health
from jobs.system import SYSTEM_PERIODIC

SECRET_PATH = "T0KEN-in-path-123"
SECRET_QUERY = "sig-in-query-456"


class Receiver(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self):
        self.posts: list[dict] = []
        self.status = 200
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                    "body": json.loads(body)})
                time.sleep(outer.delay)
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/{SECRET_PATH}?sig={SECRET_QUERY}"


@pytest.fixture
def receiver(settings):
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.ALERT_WEBHOOK_URL = server.url
    settings.ALERT_REPEAT_MINUTES = 30
    settings.ALERT_WEBHOOK_TIMEOUT = 5
    yield server
    server.shutdown()
    server.server_close()


def assert_no_secret_logged(caplog):
    for record in caplog.records:
        text = record.getMessage() + json.dumps(getattr(record, "fields", None), default=str)
        assert SECRET_PATH not in text and SECRET_QUERY not in text, text


def test_the_alert_hook_is_registered_with_the_health_check():
    from jobs.health import health_checked

    assert monitoring_alerts.alert_on_health_check in [entry[1]() for entry in health_checked.receivers]


@pytest.mark.django_db
def test_it_posts_a_dead_jobs_alert_once_while_the_condition_holds(receiver, caplog):
    caplog.set_level(logging.DEBUG, logger="jobs")
    older = make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", ago=300, subject="news:5")
    newer = make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", ago=60, subject="news:6")

    for _ in range(3):
        health_check()

    assert len(receiver.posts) == 1
    post = receiver.posts[0]
    assert post["path"] == f"/hooks/{SECRET_PATH}?sig={SECRET_QUERY}"
    assert post["content_type"] == "application/json"
    alert = post["body"]
    assert alert["alert"] == "dead_jobs" and alert["key"] == "dead_jobs:news" and alert["queue"] == "news"
    assert alert["severity"] == "error" and alert["value"] == 2 and alert["threshold"] == 0
    assert [j["id"] for j in alert["jobs"]] == [newer.pk, older.pk]
    assert alert["jobs"][0]["error"] == "RuntimeError: boom" and alert["jobs"][0]["subject"] == "news:6"
    assert alert["text"] == "[nextevent] queue news: 2 dead job(s)"

    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "jobs.monitoring.alerts"]
    assert [r.getMessage() for r in errors] == ["ALERT dead_jobs:news: queue news: 2 dead job(s)"]
    assert errors[0].fields["job_ids"] == [newer.pk, older.pk]
    assert_no_secret_logged(caplog)

    # The dedupe key lives in Redis for ALERT_REPEAT_MINUTES; once it expires, it alerts again.
    key = "nextevent:alert:dead_jobs:news"
    assert 1790 <= get_redis().ttl(key) <= 1800
    get_redis().delete(key)
    health_check()
    assert len(receiver.posts) == 2


@pytest.mark.django_db
def test_it_alerts_when_a_queues_oldest_pending_job_is_too_old(receiver, settings):
    settings.JOBS_ALERT_PENDING_AGE = 60
    make_job(state=JobState.PENDING, queue="default", ago=30)
    health_check()
    assert receiver.posts == []

    stuck = make_job(state=JobState.PENDING, queue="default", ago=95)
    health_check()
    assert len(receiver.posts) == 1
    alert = receiver.posts[0]["body"]
    assert alert["key"] == "pending_age:default" and alert["threshold"] == 60
    assert 95 <= alert["value"] < 150
    assert alert["jobs"][0]["id"] == stuck.pk


@pytest.mark.django_db
def test_a_failing_webhook_never_breaks_the_health_check_and_is_tried_again(receiver, caplog):
    caplog.set_level(logging.INFO, logger="jobs")
    make_job(state=JobState.DEAD, queue="wechat", job_type="wechat:publishing")
    receiver.status = 500

    result = health_check()
    assert "queue wechat: 1 dead job(s)" in result
    assert Heartbeat.objects.filter(name="health").exists()
    assert len(receiver.posts) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert f"alert webhook http://127.0.0.1:{receiver.server_address[1]}/… answered HTTP 500" in messages

    # Not delivered: the condition was given back, so the next check posts it again.
    receiver.status = 200
    health_check()
    health_check()
    assert len(receiver.posts) == 2
    assert_no_secret_logged(caplog)


@pytest.mark.django_db
def test_a_silent_webhook_is_cut_off_by_the_timeout(receiver, settings, caplog):
    caplog.set_level(logging.INFO, logger="jobs")
    settings.ALERT_WEBHOOK_TIMEOUT = 0.5
    receiver.delay = 3
    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration")

    started = time.monotonic()
    health_check()
    assert time.monotonic() - started < slack(2.5)
    assert any(r.getMessage().endswith("failed: ReadTimeout") for r in caplog.records)
    assert_no_secret_logged(caplog)


@pytest.mark.django_db
def test_without_a_webhook_it_only_logs_at_error_level(settings, caplog):
    settings.ALERT_WEBHOOK_URL = ""
    make_job(state=JobState.DEAD, queue="analytics", job_type="news:analytics")
    assert monitoring_alerts.alert_on_health_check({"queues": queue_health()}) == ["logged"]
    assert any(r.levelno == logging.ERROR and "ALERT dead_jobs:analytics" in r.getMessage() for r in caplog.records)
    assert monitoring_alerts.alert_on_health_check({"queues": queue_health()}) == ["suppressed"]


@pytest.mark.django_db(transaction=True)
def test_several_processes_checking_at_once_post_a_condition_once(receiver):
    make_job(state=JobState.DEAD, queue="default")
    env = {**os.environ, "DB_NAME": connection.settings_dict["NAME"], "ALERT_WEBHOOK_URL": receiver.url,
           "LOG_FORMAT": "json"}
    script = "from jobs.health import health_check; print(health_check())"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "shell", "-c", script], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all("queue default: 1 dead job(s)" in out for out, _ in outputs)
    assert [p["body"]["key"] for p in receiver.posts] == ["dead_jobs:default"]
    # Exactly one process raised it, and logged it as one JSON line at error level.
    alert_lines = [json.loads(line) for _, err in outputs for line in err.splitlines()
                   if '"event": "alert"' in line]
    assert len(alert_lines) == 1
    assert alert_lines[0]["level"] == "error" and alert_lines[0]["key"] == "dead_jobs:default"
    assert all(SECRET_PATH not in err and SECRET_QUERY not in err for _, err in outputs)


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_the_health_check_run_by_a_worker_posts_the_alert(receiver, start_cluster):
    from django.utils import timezone

    from jobs import scheduler
    from tests.conftest import wait_for

    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration")
    start_cluster(queues=["critical"], env={"ALERT_WEBHOOK_URL": receiver.url})
    # The slot the dispatcher fires every 30 s, fired now.
    scheduler.enqueue(SYSTEM_PERIODIC, {"schedule_id": 0, "name": "health_check",
                                              "func": "jobs.health.health_check", "slot": timezone.now()})
    wait_for(lambda: receiver.posts, 30, message="the worker's health check to post the alert")
    assert [p["body"]["key"] for p in receiver.posts] == ["dead_jobs:news"]
    assert Heartbeat.objects.get(name="health").details["queues"]["news"]["dead"] == 1
