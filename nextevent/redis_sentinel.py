"""Redis Sentinel, TLS and ACL users for every Redis client of the project.

settings.REDIS stays the redis-py keywords for one server (host, port, db, password, TLS
files). With REDIS_SENTINELS set, settings.REDIS_SENTINEL holds the sentinels, and
`make_client()` asks them for the current master instead of using host/port: redis-py's
SentinelConnectionPool asks again on every new connection, so after a failover the next
connection (the retry of a failed command, or the next command) reaches the new master.
Every client goes through `make_client()`: nextevent.redis.get_redis (dispatcher, wake-ups,
liveness keys, analytics buffer, token cache, alert dedupe), the /readyz probe, and
django-q2's broker through jobs.brokers.ProjectRedisBroker.
"""

from __future__ import annotations

import os

import redis
from redis.sentinel import Sentinel

from nextevent.config import ConfigError, Env

DEFAULT_MASTER = "mymaster"


def sentinel_config(env: Env) -> dict | None:
    """REDIS_SENTINELS="h1:26379,h2:26379", REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD."""
    raw = env.str("REDIS_SENTINELS", "") or ""
    if not raw.strip():
        return None
    sentinels = []
    for item in raw.split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:26379
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"REDIS_SENTINELS must be comma-separated host:port, got {item.strip()!r} in {raw!r}")
        sentinels.append((host, int(port)))
    master = (env.str("REDIS_SENTINEL_MASTER", DEFAULT_MASTER) or DEFAULT_MASTER).strip()
    if not master or any(c.isspace() for c in master):
        raise ConfigError(f"REDIS_SENTINEL_MASTER must be a master name without spaces, got {master!r}")
    return {"sentinels": sentinels, "master": master,
            "password": env.str("REDIS_SENTINEL_PASSWORD", "") or None}


def tls_options(env: Env) -> dict:
    """REDIS_TLS=1 with REDIS_TLS_CA (server verification), REDIS_TLS_CERT / REDIS_TLS_KEY
    (client certificate, when the server asks for one). Files must exist at start-up."""
    if not env.bool("REDIS_TLS", False):
        for name in ("REDIS_TLS_CA", "REDIS_TLS_CERT", "REDIS_TLS_KEY"):
            if env.str(name, ""):
                raise ConfigError(f"{name} is set but REDIS_TLS is off: set REDIS_TLS=1")
        return {}
    options = {"ssl": True, "ssl_cert_reqs": "required"}
    for name, key in (("REDIS_TLS_CA", "ssl_ca_certs"), ("REDIS_TLS_CERT", "ssl_certfile"),
                      ("REDIS_TLS_KEY", "ssl_keyfile")):
        path = env.str(name, "")
        if path:
            options[key] = readable_file(name, path)
    if ("ssl_certfile" in options) != ("ssl_keyfile" in options):
        raise ConfigError("REDIS_TLS_CERT and REDIS_TLS_KEY go together: set both or neither")
    return options


def readable_file(setting: str, path: str) -> str:
    if not os.path.isfile(path):
        raise ConfigError(f"{setting}: no such file {path!r}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{setting}: cannot read {path!r} (permissions)")
    return path


def make_client(config: dict, sentinel: dict | None, **overrides) -> redis.Redis:
    """A redis.Redis on the server (config) or on the sentinels' current master."""
    kwargs = {**config, **overrides}
    if not sentinel:
        return redis.Redis(**kwargs)
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    # The sentinels get short timeouts of their own: one that is down must not hold up the
    # question to the next one. They take no db, TLS or data-node password.
    timeout = min(float(kwargs.get("socket_connect_timeout") or 2), 2.0)
    sentinel_kwargs = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if sentinel["password"]:
        sentinel_kwargs["password"] = sentinel["password"]
    return Sentinel(sentinel["sentinels"], sentinel_kwargs=sentinel_kwargs, **kwargs).master_for(sentinel["master"])


def settings_hint() -> str:
    """Which variables to check when Redis cannot be reached, for one-line start-up errors."""
    from django.conf import settings

    if getattr(settings, "REDIS_SENTINEL", None):
        return ("check REDIS_SENTINELS (are the sentinels up?), REDIS_SENTINEL_MASTER (the name in their "
                "`sentinel monitor` line), REDIS_SENTINEL_PASSWORD, REDIS_PASSWORD, REDIS_DB")
    tls = ", REDIS_TLS_CA, REDIS_TLS_CERT, REDIS_TLS_KEY" if settings.REDIS.get("ssl") else ""
    return f"check REDIS_HOST, REDIS_PORT, REDIS_USERNAME, REDIS_PASSWORD, REDIS_DB{tls} and that the server is running"


def describe(config: dict, sentinel: dict | None) -> str:
    if sentinel:
        hosts = ",".join(f"{h}:{p}" for h, p in sentinel["sentinels"])
        return f"master {sentinel['master']!r} via sentinels {hosts} (db {config.get('db', 0)})"
    if "unix_socket_path" in config:
        return f"unix:{config['unix_socket_path']}"
    scheme = "rediss" if config.get("ssl") else "redis"
    return f"{scheme}://{config['host']}:{config['port']}/{config['db']}"
