"""REDIS_PASSWORD reaches every connection: django-q2's broker, the dispatcher, liveness keys."""

import socket
import subprocess
import time
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from jobs.models import Job, JobState
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


@pytest.fixture
def password_redis():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--requirepass", "s3cret-pass"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, password="s3cret-pass")
    wait_for(lambda: _pings(client), 10, message="the password-protected redis-server")
    yield port, client
    proc.terminate()
    proc.wait(10)


def _pings(client):
    try:
        return client.ping()
    except redis.ConnectionError:
        time.sleep(0.05)
        return False


def test_a_cluster_on_a_password_protected_redis_runs_jobs(password_redis, start_cluster):
    port, client = password_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()
    # A pending job whose wake-up never reached this Redis: the dispatcher must push it there
    # and the worker must take it from there, both authenticating.
    long_ago = timezone.now() - timedelta(minutes=5)
    job = Job.objects.create(job_type="system:noop", queue="default", payload={"marker": "auth"},
                             state=JobState.PENDING, timeout=60, run_at=long_ago, dispatched_at=long_ago)
    start_cluster(queues=["default"], wait=False,
                  env={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": "s3cret-pass",
                       "REDIS_DB": "0", "JOBS_REPUSH_AFTER": "1"})
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.COMPLETED).exists(), 60, 0.2,
             "the job to complete through the password-protected Redis")
    assert client.lrange("nextevent:noop:auth", 0, -1) == [f"{job.pk}:1".encode()]
    wait_for(lambda: client.keys("nextevent:cluster:default:*"), 10, 0.2, "the cluster's liveness key")
