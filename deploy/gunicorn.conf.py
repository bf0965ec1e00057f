"""gunicorn settings for the admin, the analytics endpoint and the WeChat callback.

    gunicorn -c deploy/gunicorn.conf.py nextevent.wsgi

Every value can be changed from the environment (the systemd unit's EnvironmentFile) without
editing this file. Sync workers: every request is short (a Redis XADD, a few SQL queries);
the slow outside calls (WeChat) happen in qcluster workers, never in a request.
"""

import multiprocessing
import os


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"configuration error: {name} must be an integer, got {raw!r}") from None


# Loopback by default: nginx (deploy/nginx.conf) is the only thing that should reach it.
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# 2 x cores + 1 is gunicorn's rule for sync workers; the bench states what it ran with.
workers = _int("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2 + 1)
worker_class = "sync"
# A request that takes longer is stuck (the slowest, a 1,000-event batch, takes ~20 ms).
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# Replace workers now and then so a slow leak cannot grow forever; jitter avoids all at once.
max_requests = _int("GUNICORN_MAX_REQUESTS", 10_000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 1_000)
# Heartbeat files in memory, not on a disk that may stall (gunicorn's own advice).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# The control socket would default to ~/.gunicorn/gunicorn.ctl, shared by every gunicorn of
# the user; off unless a path is given.
_control = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not _control
if _control:
    control_socket = _control

# Trusted proxy: X-Forwarded-Proto (-> https scheme, secure cookies, SSL redirect) is believed
# only on connections from these addresses; anyone else's header is ignored.
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Access log WITHOUT query strings: WeChat puts its signature, timestamp and nonce in the
# callback's query string, and admin filters can carry personal data. %(U)s is the path alone;
# %(r)s (the request line) and %(f)s (the referer) would carry the query, so neither is used.
# Client address from the proxy's X-Forwarded-For, request time in ms.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
access_log_format = '%({x-forwarded-for}i)s %(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%(a)s"'
errorlog = os.environ.get("GUNICORN_ERROR_LOG", "-")
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
proc_name = "nextevent-web"
