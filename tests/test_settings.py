"""Settings come from the environment, typed, with errors that name the variable."""

import subprocess
import sys

import pytest

from nextevent.config import ConfigError, Env, database_config, redis_config
from tests.conftest import ROOT


def test_it_uses_the_documented_defaults():
    env = Env({})
    db = database_config(env, embedded=False)
    assert (db["HOST"], db["PORT"], db["USER"], db["PASSWORD"], db["NAME"]) == ("localhost", 3306, "root", "", "nextevent")
    assert db["OPTIONS"]["charset"] == "utf8mb4"
    assert "STRICT_TRANS_TABLES" in db["OPTIONS"]["init_command"]
    redis = redis_config(env, embedded=False)
    assert (redis["host"], redis["port"], redis["db"]) == ("localhost", 6379, 0)
    assert "password" not in redis


def test_it_reads_each_variable():
    env = Env({"DB_HOST": "db.internal", "DB_PORT": "3307", "DB_USERNAME": "app", "DB_PASSWORD": "s3cret",
               "DB_NAME": "ne", "REDIS_HOST": "cache", "REDIS_PORT": "6380", "REDIS_PASSWORD": "pw",
               "REDIS_DB": "2"})
    db = database_config(env, embedded=False)
    assert (db["HOST"], db["PORT"], db["USER"], db["PASSWORD"], db["NAME"]) == ("db.internal", 3307, "app", "s3cret", "ne")
    redis = redis_config(env, embedded=False)
    assert (redis["host"], redis["port"], redis["db"], redis["password"]) == ("cache", 6380, 2, "pw")


@pytest.mark.parametrize("name,value", [("DB_PORT", "abc"), ("REDIS_PORT", "99999"), ("REDIS_DB", "-1")])
def test_a_bad_value_names_the_variable(name, value):
    with pytest.raises(ConfigError) as err:
        env = Env({name: value})
        database_config(env, embedded=False)
        redis_config(env, embedded=False)
    assert name in str(err.value) and value in str(err.value)


def test_the_redis_password_reaches_django_q2_broker():
    from django.conf import settings

    assert settings.Q_CLUSTER["redis"] is settings.REDIS


def test_a_bad_db_port_stops_start_up_with_one_line():
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DB_PORT": "not-a-port", "DJANGO_DEBUG": "1"})
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: DB_PORT must be an integer, got 'not-a-port'"


def test_a_missing_secret_key_is_refused_outside_debug():
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_an_unreachable_database_gives_one_clear_line_at_qcluster_start():
    result = subprocess.run([sys.executable, "manage.py", "qcluster"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "DB_HOST": "127.0.0.1",
                                 "DB_PORT": "1"}, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "DB_HOST" in lines[0]


def test_an_unreachable_redis_gives_one_clear_line_at_qcluster_start(cluster_env):
    env = {**cluster_env, "REDIS_PORT": "1", "REDIS_HOST": "127.0.0.1"}
    result = subprocess.run([sys.executable, "manage.py", "qcluster"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "REDIS_HOST" in lines[0]
