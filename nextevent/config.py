"""Every setting that comes from the environment, read in one place.

Readers are typed and fail with the variable's name and the bad value, so a typo in a
deployment stops start-up with one readable line instead of a traceback deep in Django.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


class ConfigError(ImproperlyConfigured):
    """A variable is present but cannot be parsed; the message names it."""


class Env:
    """Thin typed layer over django-environ that names the variable on every error."""

    def __init__(self, environ_map: dict[str, str] | None = None):
        self._env = environ.Env()
        if environ_map is not None:
            self._env.ENVIRON = environ_map

    @property
    def environ(self):
        return self._env.ENVIRON

    def _parse(self, kind: str, name: str, default, caster):
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return caster(name)
        except (ValueError, TypeError, ImproperlyConfigured):
            raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.environ.get(name)
        return default if value is None else value

    def int(self, name: str, default: int, *, min_value: int | None = None,
            max_value: int | None = None) -> int:
        value = self._parse("an integer", name, default, self._env.int)
        if min_value is not None and value < min_value:
            raise ConfigError(f"{name} must be >= {min_value}, got {value!r}")
        if max_value is not None and value > max_value:
            raise ConfigError(f"{name} must be <= {max_value}, got {value!r}")
        return value

    def float(self, name: str, default: float, *, min_value: float | None = None) -> float:
        value = self._parse("a number", name, default, self._env.float)
        if min_value is not None and value < min_value:
            raise ConfigError(f"{name} must be >= {min_value}, got {value!r}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")

    def list(self, name: str, default: list[str]) -> list[str]:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            return default
        return [item.strip() for item in raw.split(",") if item.strip()]


def read_dotenv(path: Path = BASE_DIR / ".env") -> None:
    """Load an optional .env file; variables already in the environment win."""
    if path.exists():
        environ.Env.read_env(str(path), overwrite=False)


def embedded_enabled(env: Env | None = None) -> bool:
    return (env or Env()).bool("NEXTEVENT_EMBEDDED", False)


def database_config(env: Env, *, embedded: bool) -> dict:
    if embedded:
        var = BASE_DIR / "var"
        var.mkdir(exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(var / "nextevent.sqlite3"),
            # Thirteen worker processes share one file: wait for the lock instead of failing.
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE",
                        "init_command": "PRAGMA journal_mode=WAL;"},
            "TEST": {"NAME": str(var / "test.sqlite3")},
        }
    return {
        "ENGINE": "django.db.backends.mysql",
        "HOST": env.str("DB_HOST", "localhost"),
        "PORT": env.int("DB_PORT", 3306, min_value=1, max_value=65535),
        "USER": env.str("DB_USERNAME", "root"),
        "PASSWORD": env.str("DB_PASSWORD", ""),
        "NAME": env.str("DB_NAME", "nextevent"),
        # Persistent connections: workers run thousands of short jobs; reconnecting for
        # each would dominate a no-op job's cost.
        "CONN_MAX_AGE": env.int("DB_CONN_MAX_AGE", 60, min_value=0),
        # No ping before each job: it would add a round trip to every job. A connection that
        # died (MariaDB restarted) fails one attempt, which is retried, and is then replaced.
        "CONN_HEALTH_CHECKS": env.bool("DB_CONN_HEALTH_CHECKS", False),
        "OPTIONS": {
            "charset": "utf8mb4",
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,"
                            "ERROR_FOR_DIVISION_BY_ZERO'",
            # Row claims and SKIP LOCKED behave as expected only under READ COMMITTED.
            "isolation_level": "read committed",
            "connect_timeout": env.int("DB_CONNECT_TIMEOUT", 5, min_value=1),
            # read_timeout / write_timeout come from database_timeouts(), per process role.
            **database_tls_options(env),
        },
        "TEST": {"NAME": env.str("DB_TEST_NAME", "test_" + env.str("DB_NAME", "nextevent")),
                 "CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
    }


# What a process is, for how long it may wait on one MySQL read or write. A connection whose
# server vanished (a failover moved its address, the host died) is never closed by the
# other side: without a read timeout a query waits for TCP to give up, about 15 minutes.
ENGINE_COMMANDS = frozenset({"qcluster", "jobs_cluster"})
# Schema changes on a large ledger legitimately take minutes and hold no job: no bound.
SCHEMA_COMMANDS = frozenset({"migrate"})


def process_role(argv: list[str]) -> str:
    """"engine" for qcluster and its clusters, "schema" for migrate, else "default" (web,
    one-off commands, tests). Read from argv because settings load before the command runs."""
    command = argv[1] if len(argv) > 1 and argv[0].endswith(("manage.py", "django-admin")) else ""
    if command in ENGINE_COMMANDS:
        return "engine"
    if command in SCHEMA_COMMANDS:
        return "schema"
    return "default"


def database_timeouts(env: Env, *, role: str, engine_timeout: int) -> dict:
    """mysqlclient's read_timeout and write_timeout (seconds) for this process's role: the
    engine's loops (dispatcher, claims, lease renewals) JOBS_DB_TIMEOUT, so a dead connection
    is given up well inside a lease; web requests and commands DB_READ_TIMEOUT and
    DB_WRITE_TIMEOUT; migrate none."""
    if role == "schema":
        return {}
    if role == "engine":
        return {"read_timeout": engine_timeout, "write_timeout": engine_timeout}
    return {"read_timeout": env.int("DB_READ_TIMEOUT", 30, min_value=1),
            "write_timeout": env.int("DB_WRITE_TIMEOUT", 30, min_value=1)}


def database_tls_options(env: Env) -> dict:
    """DB_SSL_CA (verify the server), DB_SSL_CERT / DB_SSL_KEY (client certificate, for users
    created REQUIRE X509). Files must exist at start-up; the error names the variable."""
    from nextevent.redis_sentinel import readable_file

    ssl = {}
    for name, key in (("DB_SSL_CA", "ca"), ("DB_SSL_CERT", "cert"), ("DB_SSL_KEY", "key")):
        path = env.str(name, "")
        if path:
            ssl[key] = readable_file(name, path)
    if ("cert" in ssl) != ("key" in ssl):
        raise ConfigError("DB_SSL_CERT and DB_SSL_KEY go together: set both or neither")
    if ssl and "ca" not in ssl:
        raise ConfigError("DB_SSL_CERT needs DB_SSL_CA: the server's certificate must be verified")
    return {"ssl": ssl} if ssl else {}


def _redis_retry():
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    # redis-py's default (10 retries with backoff) makes every call to a Redis that is down
    # take seconds; a blip is covered by two quick retries, an outage is reported at once.
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)


# The longest blocking command any client sends: django-q2's BLPOP waits 1 s for a wake-up
# (brokers/redis_broker.py). The socket timeout must leave it room, or every idle worker's
# BLPOP would end in a timeout error.
LONGEST_BLOCKING_COMMAND_S = 1.0


def redis_socket_timeout(env: Env) -> float:
    timeout = env.float("REDIS_SOCKET_TIMEOUT", 5.0, min_value=0.1)
    if timeout <= LONGEST_BLOCKING_COMMAND_S + 1:
        raise ConfigError(f"REDIS_SOCKET_TIMEOUT must be more than {LONGEST_BLOCKING_COMMAND_S + 1:g} s "
                          f"(the workers' BLPOP waits {LONGEST_BLOCKING_COMMAND_S:g} s), got {timeout:g}")
    return timeout


def redis_wait_options(socket_timeout: float) -> dict:
    """Bounded waits for every TCP Redis client: a read on a connection whose server vanished
    (no RST, no FIN) fails after REDIS_SOCKET_TIMEOUT and redis-py's retry reconnects; TCP
    keepalive finds dead idle connections in the pool; a health check pings one idle 30 s."""
    return {"socket_timeout": socket_timeout, "socket_keepalive": True,
            "socket_keepalive_options": _keepalive_options(), "health_check_interval": 30}


def _keepalive_options() -> dict:
    import socket

    # Probe after 10 s idle, every 5 s, give up after 3 unanswered: a dead peer in ~25 s.
    options = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in options.items() if hasattr(socket, name)}


def redis_config(env: Env, *, embedded: bool) -> dict:
    """Connection keywords for redis-py; used by django-q2's broker and by every other client."""
    if embedded:
        from nextevent import embedded as embedded_redis

        return {"unix_socket_path": str(embedded_redis.ensure_server()),
                "db": env.int("REDIS_DB", 0, min_value=0, max_value=15), "retry": _redis_retry(),
                "socket_timeout": redis_socket_timeout(env)}
    config = {
        "host": env.str("REDIS_HOST", "localhost"),
        "port": env.int("REDIS_PORT", 6379, min_value=1, max_value=65535),
        "db": env.int("REDIS_DB", 0, min_value=0, max_value=15),
        "socket_connect_timeout": 5,
        **redis_wait_options(redis_socket_timeout(env)),
        "retry": _redis_retry(),
    }
    password = env.str("REDIS_PASSWORD", "")
    if password:
        config["password"] = password
    # An ACL user (deploy/redis.conf); without it AUTH uses the default user.
    username = env.str("REDIS_USERNAME", "")
    if username:
        config["username"] = username
    from nextevent.redis_sentinel import tls_options

    config.update(tls_options(env))
    return config


def analytics_redis_config(env: Env) -> dict | None:
    """The analytics buffer's own Redis, either by URL: ANALYTICS_REDIS_URL (redis://host:port/db,
    rediss://..., unix:///path?db=N), or through the sentinels of REDIS_SENTINELS:
    ANALYTICS_REDIS_SENTINEL_MASTER (the master's name there) with ANALYTICS_REDIS_DB; an
    optional ANALYTICS_REDIS_PASSWORD either way (kept out of the URL, so the URL can be
    logged). None: the analytics buffer shares the project's Redis."""
    url = env.str("ANALYTICS_REDIS_URL", "")
    master = (env.str("ANALYTICS_REDIS_SENTINEL_MASTER", "") or "").strip()
    password = env.str("ANALYTICS_REDIS_PASSWORD", "")
    if master:
        if url:
            raise ConfigError("ANALYTICS_REDIS_URL and ANALYTICS_REDIS_SENTINEL_MASTER exclude each other: "
                              "set the URL for a fixed server, the master name to follow the sentinels")
        if not (env.str("REDIS_SENTINELS", "") or "").strip():
            raise ConfigError("ANALYTICS_REDIS_SENTINEL_MASTER needs REDIS_SENTINELS: the sentinels that know it")
        if any(c.isspace() for c in master):
            raise ConfigError(f"ANALYTICS_REDIS_SENTINEL_MASTER must be a master name without spaces, got {master!r}")
        return {"sentinel_master": master, "db": env.int("ANALYTICS_REDIS_DB", 0, min_value=0, max_value=15),
                "password": password}
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"ANALYTICS_REDIS_URL must start with redis://, rediss:// or unix://, got {url[:40]!r}")
    return {"url": url, "password": password}


def meta_header_name(env: Env, name: str) -> str:
    """An HTTP header name from the environment as Django's request.META key
    ("X-Forwarded-For" -> "HTTP_X_FORWARDED_FOR"); empty when unset."""
    raw = (env.str(name, "") or "").strip()
    if not raw:
        return ""
    if not all(c.isalnum() or c in "-_" for c in raw):
        raise ConfigError(f"{name} must be an HTTP header name such as X-Forwarded-For, got {raw!r}")
    key = raw.upper().replace("-", "_")
    return key if key.startswith("HTTP_") or key == "REMOTE_ADDR" else "HTTP_" + key


def describe_redis(config: dict) -> str:
    from django.conf import settings

    from nextevent.redis_sentinel import describe

    return describe(config, getattr(settings, "REDIS_SENTINEL", None))


SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE = 5


def check_secret_key(key: str) -> None:
    """Django's own rule for a strong key (check --deploy's security.W009), enforced at start-up."""
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_UNIQUE or key.startswith("django-insecure-"):
        raise ConfigError(
            f"DJANGO_SECRET_KEY is too weak ({len(key)} characters, {len(set(key))} different): it needs at least "
            f"{SECRET_KEY_MIN_LENGTH} characters with at least {SECRET_KEY_MIN_UNIQUE} different ones; generate one "
            f"with: python -c 'import secrets; print(secrets.token_urlsafe(50))'")


def generated_secret_key(path: Path | str) -> str:
    """The key in `path`, created (0600, random) by the first process that needs it. Created
    under another name and linked into place, so processes starting together agree on one."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50) + "\n")
            try:
                os.link(tmp, path)  # fails if another process linked its key first: use that one
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if len(key) < SECRET_KEY_MIN_LENGTH:
        raise ConfigError(f"the generated secret key in {path} is damaged (delete the file to make a new one)")
    return key


def proxy_ssl_header(value: str) -> tuple[str, str] | None:
    """DJANGO_SECURE_PROXY_SSL_HEADER: "X-Forwarded-Proto" or "X-Forwarded-Proto: https"."""
    if not value.strip():
        return None
    name, _, expected = value.partition(":")
    name, expected = name.strip(), expected.strip() or "https"
    if not name or not all(c.isalnum() or c == "-" for c in name):
        raise ConfigError(f"DJANGO_SECURE_PROXY_SSL_HEADER must be a header name like X-Forwarded-Proto, got {value!r}")
    return "HTTP_" + name.upper().replace("-", "_"), expected
