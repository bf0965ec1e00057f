"""TLS to Redis (REDIS_TLS, REDIS_TLS_CA/CERT/KEY) and to MariaDB (DB_SSL_CA/CERT/KEY), with
certificates the test makes, against a TLS-only private redis-server and a private MariaDB
whose user must use TLS. A missing file stops start-up with one line naming the setting."""

import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from jobs.models import Job, JobState
from tests.conftest import ROOT, wait_for
from tests.redis_servers import RedisProcess
from tests.tls_certs import make_certs



def _free_port() -> int:
    # A fixed port collided with another run's server on this shared machine: ask the kernel.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REDIS_TLS_PORT = _free_port()
MARIADB_PORT = _free_port()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    return {"good": make_certs(base / "good"), "other": make_certs(base / "other", "some other CA")}


def manage(args, env, timeout=90):
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- Redis


@pytest.fixture
def tls_redis(tmp_path, certs):
    c = certs["good"]
    server = RedisProcess("tls-redis", REDIS_TLS_PORT, tmp_path, [
        "--port", "0", "--tls-port", str(REDIS_TLS_PORT), "--tls-cert-file", str(c["server.crt"]),
        "--tls-key-file", str(c["server.key"]), "--tls-ca-cert-file", str(c["ca.crt"]), "--tls-auth-clients", "yes"])
    client_kwargs = {"ssl": True, "ssl_ca_certs": str(c["ca.crt"]), "ssl_certfile": str(c["client.crt"]),
                     "ssl_keyfile": str(c["client.key"])}
    try:  # a server that never answers is stopped too: nothing outlives the fixture
        server.wait_ready(**client_kwargs)
        yield server, server.client(**client_kwargs)
    finally:
        server.stop()


def tls_env(c, **extra):
    return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(REDIS_TLS_PORT), "REDIS_DB": "0", "REDIS_TLS": "1",
            "REDIS_TLS_CA": str(c["ca.crt"]), "REDIS_TLS_CERT": str(c["client.crt"]),
            "REDIS_TLS_KEY": str(c["client.key"]), **extra}


@pytest.mark.django_db(transaction=True)
@pytest.mark.cluster
def test_a_cluster_runs_jobs_over_tls_only_redis(tls_redis, certs, start_cluster):
    server, client = tls_redis
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=REDIS_TLS_PORT, socket_timeout=2).ping()  # plain TCP: refused
    # A pending job whose wake-up never reached this Redis: the dispatcher pushes it over TLS and
    # the worker's BLPOP (django-q2 through jobs.brokers) takes it over TLS.
    long_ago = timezone.now() - timedelta(minutes=5)
    job = Job.objects.create(job_type="system:noop", queue="default", payload={"marker": "tls"},
                             state=JobState.PENDING, timeout=60, run_at=long_ago, dispatched_at=long_ago)
    start_cluster(queues=["default"], wait=False, env={**tls_env(certs["good"]), "JOBS_REPUSH_AFTER": "1"})
    wait_for(lambda: Job.objects.filter(pk=job.pk, state=JobState.COMPLETED).exists(), 60, 0.2,
             "the job to complete through the TLS-only Redis")
    assert client.lrange("nextevent:noop:tls", 0, -1) == [f"{job.pk}:1".encode()]


@pytest.mark.django_db(transaction=True)
def test_redis_tls_refuses_an_unknown_ca_and_a_missing_client_certificate(tls_redis, certs, cluster_env):
    # qcluster's start-up check, one line each, naming the settings to check.
    wrong_ca = tls_env(certs["good"], REDIS_TLS_CA=str(certs["other"]["ca.crt"]))
    result = manage(["qcluster", "--no-sync-schedules"], {**cluster_env, **wrong_ca})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "certificate verify failed" in lines[0] and "REDIS_TLS_CA" in lines[0]

    no_client_cert = {**tls_env(certs["good"]), "REDIS_TLS_CERT": "", "REDIS_TLS_KEY": ""}
    result = manage(["qcluster", "--no-sync-schedules"], {**cluster_env, **no_client_cert})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "cannot reach Redis at rediss://" in lines[0], result.stderr


def test_missing_tls_files_stop_start_up_with_one_line(cluster_env, certs, tmp_path):
    cases = {
        "REDIS_TLS_CA": tls_env(certs["good"], REDIS_TLS_CA=str(tmp_path / "nope.crt")),
        "DB_SSL_CA": {"DB_SSL_CA": str(tmp_path / "nope.crt")},
    }
    for setting, env in cases.items():
        result = manage(["check"], {**cluster_env, **env})
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"configuration error: {setting}: no such file '{tmp_path / 'nope.crt'}'"], result.stderr
    result = manage(["check"], {**cluster_env, "REDIS_TLS_CA": str(certs["good"]["ca.crt"])})
    assert result.stderr.strip() == "configuration error: REDIS_TLS_CA is set but REDIS_TLS is off: set REDIS_TLS=1"


# ---------------------------------------------------------------- MariaDB


@pytest.fixture(scope="module")
def tls_mariadb(tmp_path_factory, certs):
    if not shutil.which("mariadb-install-db"):
        pytest.fail("mariadb-install-db is missing (Debian package mariadb-server)")
    base = tmp_path_factory.mktemp("mariadb")
    c = certs["good"]
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={base / 'data'}", "--user=root",
                    "--auth-root-authentication-method=normal", "--skip-test-db"],
                   check=True, capture_output=True, timeout=180)
    sock = base / "sock"
    proc = subprocess.Popen(["mariadbd", "--no-defaults", f"--datadir={base / 'data'}", f"--port={MARIADB_PORT}",
                             f"--socket={sock}", "--user=root", "--bind-address=127.0.0.1",
                             f"--ssl-cert={c['server.crt']}", f"--ssl-key={c['server.key']}", f"--ssl-ca={c['ca.crt']}",
                             "--skip-log-bin", "--innodb-buffer-pool-size=32M"],
                            stdout=subprocess.DEVNULL, stderr=open(base / "mariadbd.log", "wb"))
    sql = ("CREATE DATABASE nextevent_tls CHARACTER SET utf8mb4;"
           "CREATE USER 'tlsuser'@'%' IDENTIFIED BY 'tls-pass' REQUIRE SSL;"
           "CREATE USER 'x509user'@'%' IDENTIFIED BY 'x509-pass' REQUIRE X509;"
           "GRANT ALL ON nextevent_tls.* TO 'tlsuser'@'%', 'x509user'@'%';")
    try:  # stopped whatever happens in set-up or in the tests
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql],
                                  capture_output=True, text=True, timeout=30)
            if done.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"private MariaDB did not start: {done.stderr}\n"
                            f"{(base / 'mariadbd.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


SSL_CIPHER = ("from django.db import connection\n"
              "c = connection.cursor(); c.execute(\"SHOW SESSION STATUS LIKE 'Ssl_cipher'\"); print(c.fetchone()[1])")


def db_env(cluster_env, user, password, **extra):
    return {**cluster_env, "DB_HOST": "127.0.0.1", "DB_PORT": str(MARIADB_PORT), "DB_USERNAME": user,
            "DB_PASSWORD": password, "DB_NAME": "nextevent_tls", **extra}


def test_database_connection_uses_tls_with_db_ssl_ca(tls_mariadb, certs, cluster_env):
    c = certs["good"]
    result = manage(["shell", "-c", SSL_CIPHER], db_env(cluster_env, "tlsuser", "tls-pass", DB_SSL_CA=str(c["ca.crt"])))
    assert result.returncode == 0 and result.stdout.strip(), result.stderr  # a cipher name: TLS is on

    # The user is REQUIRE SSL: without DB_SSL_CA the project connects in the clear and is refused.
    result = manage(["shell", "-c", SSL_CIPHER], db_env(cluster_env, "tlsuser", "tls-pass"))
    assert result.returncode != 0 and "Access denied" in result.stderr

    # REQUIRE X509: the client certificate (DB_SSL_CERT/KEY) is needed too.
    with_cert = db_env(cluster_env, "x509user", "x509-pass", DB_SSL_CA=str(c["ca.crt"]),
                       DB_SSL_CERT=str(c["client.crt"]), DB_SSL_KEY=str(c["client.key"]))
    result = manage(["shell", "-c", SSL_CIPHER], with_cert)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    result = manage(["shell", "-c", SSL_CIPHER], {**with_cert, "DB_SSL_CERT": "", "DB_SSL_KEY": ""})
    assert result.returncode != 0 and "Access denied" in result.stderr


def test_database_tls_rejects_a_server_signed_by_another_ca(tls_mariadb, certs, cluster_env):
    env = db_env(cluster_env, "tlsuser", "tls-pass", DB_SSL_CA=str(certs["other"]["ca.crt"]))
    result = manage(["shell", "-c", SSL_CIPHER], env)
    assert result.returncode != 0, f"connected to a server whose certificate the CA did not sign: {result.stdout}"
    # Refused by the certificate check, not by the server (a plain connection is "Access denied").
    assert "Access denied" not in result.stderr and "certificate" in result.stderr.lower(), result.stderr[-1500:]
