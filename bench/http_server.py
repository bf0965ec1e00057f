"""A real gunicorn (deploy/gunicorn.conf.py) on loopback, for the HTTP benchmark and the
production web tests. Nothing here is timed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
CONFIG = ROOT / "deploy" / "gunicorn.conf.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collectstatic(static_root: Path, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "collectstatic", "--noinput", "-v", "0"],
                   cwd=ROOT, env={**env, "STATIC_ROOT": str(static_root)}, check=True, timeout=120)


class Gunicorn:
    """`gunicorn -c deploy/gunicorn.conf.py nextevent.wsgi` with the given environment."""

    def __init__(self, env: dict[str, str], workers: int, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.access_log = log_dir / "gunicorn-access.log"
        self.error_log = log_dir / "gunicorn-error.log"
        full_env = {**env, "GUNICORN_BIND": f"127.0.0.1:{self.port}", "GUNICORN_WORKERS": str(workers),
                    "GUNICORN_ACCESS_LOG": str(self.access_log), "GUNICORN_ERROR_LOG": str(self.error_log)}
        self.proc = subprocess.Popen([str(GUNICORN), "-c", str(CONFIG), "nextevent.wsgi"], cwd=ROOT, env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> "Gunicorn":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.errors()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer /healthz within {timeout} s:\n{self.errors()[-3000:]}")

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM to the arbiter: gunicorn's graceful stop (what systemd sends)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
