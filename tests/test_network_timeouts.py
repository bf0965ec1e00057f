"""Every wait on MySQL and Redis is bounded, sized per process role, and a bad value stops
start-up with one line naming the variable."""

import subprocess
import sys

import pytest

from nextevent.config import ConfigError, Env, database_timeouts, process_role, redis_config, redis_socket_timeout
from tests.conftest import ROOT


@pytest.mark.parametrize("argv,role", [
    (["manage.py", "qcluster"], "engine"),
    (["/srv/nextevent/manage.py", "jobs_cluster"], "engine"),
    (["manage.py", "migrate"], "schema"),
    (["manage.py", "runserver"], "default"),
    (["/venv/bin/gunicorn", "nextevent.wsgi"], "default"),
    (["pytest", "qcluster"], "default"),
])
def test_the_process_role_comes_from_the_command(argv, role):
    assert process_role(argv) == role


def test_the_engine_waits_less_than_a_web_request_and_migrate_not_at_all():
    env = Env({"DB_READ_TIMEOUT": "40", "DB_WRITE_TIMEOUT": "20"})
    assert database_timeouts(env, role="engine", engine_timeout=5) == {"read_timeout": 5, "write_timeout": 5}
    assert database_timeouts(env, role="default", engine_timeout=5) == {"read_timeout": 40, "write_timeout": 20}
    assert database_timeouts(env, role="schema", engine_timeout=5) == {}
    assert database_timeouts(Env({}), role="default", engine_timeout=5) == {"read_timeout": 30, "write_timeout": 30}


def test_every_redis_client_gets_a_socket_timeout_longer_than_the_workers_blpop():
    config = redis_config(Env({}), embedded=False)
    assert config["socket_timeout"] == 5.0 and config["socket_keepalive"] is True
    assert redis_config(Env({"REDIS_SOCKET_TIMEOUT": "9"}), embedded=False)["socket_timeout"] == 9.0
    with pytest.raises(ConfigError, match="REDIS_SOCKET_TIMEOUT must be more than 2 s"):
        redis_socket_timeout(Env({"REDIS_SOCKET_TIMEOUT": "1.5"}))


def check(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", **env})


def test_a_database_timeout_that_would_outlast_a_lease_is_refused():
    result = check({"JOBS_DB_TIMEOUT": "9", "JOBS_LEASE_SECONDS": "10", "JOBS_HEARTBEAT_SECONDS": "2"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("configuration error: JOBS_DB_TIMEOUT (9) plus JOBS_HEARTBEAT_SECONDS (2)")


def test_a_short_lease_gets_a_database_timeout_that_fits_it():
    code = "from django.conf import settings as s; print(s.JOBS_DB_TIMEOUT)"
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1",
                                                        "JOBS_LEASE_SECONDS": "5", "JOBS_HEARTBEAT_SECONDS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "3"


@pytest.mark.django_db(transaction=True)
def test_a_claim_whose_connection_died_under_it_is_sent_again_on_a_new_one(caplog):
    """The claim's packet goes out on a connection that has silently died (its server's
    address moved): the read times out, and the same packet on a new connection claims the
    job once, rather than failing the wake-up and leaving the job to a re-push."""
    from django.db import connection
    from django.utils import timezone

    from jobs import services
    from jobs.models import Job, JobState
    from jobs.system import SYSTEM_NOOP
    from tests.outage import OutageProxy

    job = Job.objects.create(job_type=SYSTEM_NOOP, queue="default", payload={}, state=JobState.PENDING,
                             timeout=60, run_at=timezone.now())
    saved = dict(connection.settings_dict), dict(connection.settings_dict["OPTIONS"])
    proxy = OutageProxy("127.0.0.1", int(connection.settings_dict["PORT"] or 3306))
    try:
        connection.close()
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port))
        connection.settings_dict["OPTIONS"].update(read_timeout=1, write_timeout=1)
        connection.ensure_connection()
        proxy.blackhole()
        claimed = services.job_claim(job.pk, worker=services.worker_id())
    finally:
        connection.close()
        connection.settings_dict.update(saved[0])
        connection.settings_dict["OPTIONS"] = saved[1]
        proxy.close()
    assert claimed is not None and claimed.pk == job.pk
    job.refresh_from_db()
    assert (job.state, job.attempts, job.claims) == (JobState.ACTIVE, 1, 1)
    assert "claim lost its database connection" in caplog.text
