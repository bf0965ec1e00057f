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


BROKER_KWARGS = """
from django.conf import settings
from django_q.brokers import get_broker
from nextevent.redis import get_redis
broker = get_broker("default")
kw = broker.connection.connection_pool.connection_kwargs
ours = get_redis().connection_pool.connection_kwargs
print(kw.get("password"), kw.get("host"), kw.get("port"), kw.get("db"), kw.get("socket_connect_timeout"),
      ours.get("password"), settings.Q_CLUSTER["redis"] is settings.REDIS)
"""


def test_the_redis_password_reaches_django_q2_broker():
    # Built by the settings from the environment in a fresh process, as a deployment would,
    # and read back from the connection pool django-q2's broker really uses.
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", BROKER_KWARGS], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "REDIS_PASSWORD": "pw-from-env",
                                 "REDIS_HOST": "redis.internal", "REDIS_PORT": "6390", "REDIS_DB": "3"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["pw-from-env", "redis.internal", "6390", "3", "5", "pw-from-env", "True"]


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


# ---------------------------------------------------------------- keys and production

STRONG_KEY = "k3y-for-the-production-settings-tests-0123456789-abcdefghij"
PRINT_KEY = "from nextevent import settings; print(settings.SECRET_KEY)"


def run_python(code: str, env: dict, timeout: float = 60):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/bin:/bin", **env})


def test_debug_without_a_key_generates_one_and_reuses_it(tmp_path):
    import stat

    key_file = tmp_path / "var" / "secret_key"
    env = {"DJANGO_DEBUG": "1", "DJANGO_SECRET_KEY_FILE": str(key_file)}

    first, second = (run_python(PRINT_KEY, env) for _ in range(2))

    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert key == second.stdout.strip() == key_file.read_text().strip()
    assert len(key) >= 50 and key != "insecure-debug-only-key-do-not-use-in-production"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_debug_without_a_key_file_setting_uses_var(tmp_path):
    result = run_python(PRINT_KEY, {"DJANGO_DEBUG": "1"})

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (ROOT / "var" / "secret_key").read_text().strip()


def test_processes_starting_together_agree_on_one_generated_key(tmp_path):
    key_file = tmp_path / "secret_key"
    env = {"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "DJANGO_SECRET_KEY_FILE": str(key_file)}
    procs = [subprocess.Popen([sys.executable, "-c", PRINT_KEY], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}

    assert keys == {key_file.read_text().strip()}
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temporary file left behind


@pytest.mark.parametrize("key", ["short", "a" * 60, "abab" * 20, "django-insecure-" + "x1y2z3w4v5" * 5])
def test_a_weak_secret_key_stops_production_start_up_with_one_line(key):
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "DJANGO_SECRET_KEY": key}, timeout=60)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: DJANGO_SECRET_KEY is too weak")
    assert key not in result.stderr  # the key itself is never printed


def test_a_short_key_is_still_accepted_in_debug():
    result = run_python(PRINT_KEY, {"DJANGO_DEBUG": "1", "DJANGO_SECRET_KEY": "short"})
    assert result.returncode == 0 and result.stdout.strip() == "short"


PRODUCTION_ENV = {"DJANGO_SECRET_KEY": STRONG_KEY, "DJANGO_ALLOWED_HOSTS": "news.example.com"}


def check_deploy(**extra):
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", **PRODUCTION_ENV, **extra})


def test_check_deploy_passes_in_production_mode_with_the_defaults():
    result = check_deploy()
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("name, value, warning", [
    ("DJANGO_SECURE_SSL_REDIRECT", "0", "security.W008"),
    ("DJANGO_SECURE_COOKIES", "0", "security.W012"),
    ("DJANGO_SECURE_HSTS_SECONDS", "0", "security.W004"),
])
def test_each_production_setting_can_be_turned_off_and_check_deploy_says_so(name, value, warning):
    result = check_deploy(**{name: value})
    assert result.returncode != 0 and warning in result.stderr


def test_the_production_settings_take_the_proxy_header_and_hsts_from_the_environment():
    code = ("from nextevent import settings as s; print(s.SECURE_PROXY_SSL_HEADER, s.SECURE_HSTS_SECONDS, "
            "s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.METRICS_PUBLIC)")
    result = run_python(code, {**PRODUCTION_ENV, "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
                               "DJANGO_SECURE_HSTS_SECONDS": "600"})
    assert result.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https') 600 True True True False"
    bad = run_python(code, {**PRODUCTION_ENV, "DJANGO_SECURE_PROXY_SSL_HEADER": "X Forwarded"})
    assert bad.returncode != 0 and "DJANGO_SECURE_PROXY_SSL_HEADER must be a header name" in bad.stderr
    debug = run_python(code, {"DJANGO_DEBUG": "1", "DJANGO_SECRET_KEY": STRONG_KEY})
    assert debug.stdout.strip() == "None 0 False False False True"


@pytest.mark.django_db
def test_behind_the_proxy_http_is_redirected_and_its_https_header_trusted(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

    redirected = client.get("/admin/login/")
    assert redirected.status_code == 301 and redirected["Location"].startswith("https://")
    assert client.get("/admin/login/", headers={"X-Forwarded-Proto": "https"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes over plain HTTP are exempt
