#!/usr/bin/env python3
"""CI smoke test of the README's quick start: clone HEAD into a temporary directory, run
./scripts/quickstart there (embedded mode: SQLite and the embedded redis-server), wait for
the demo's scheduled news item to be published and its failing job to be dead, stop it with
SIGINT to its process group (what Ctrl-C does) and check that no process is left.

    .venv/bin/python scripts/quickstart_smoke.py [--fresh-venv] [--timeout 180]

By default the clone uses this checkout's .venv (a symlink) so the run takes about a minute;
--fresh-venv lets the quick start create and fill its own, as on a new machine.
Exits 0 on success, 1 with the reason and the logs' tails otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STATUS = """
import json
from jobs.models import Job
from news.models import News
from jobs.system import SYSTEM_NOOP
# Published at its time (the demo archives it a minute later: either state shows it ran).
news = [status if at else "never published" for status, at in
        News.objects.filter(title__startswith="Demo scheduled news").values_list("status", "published_at")]
failing = [j.state for j in Job.objects.filter(job_type=SYSTEM_NOOP) if (j.payload or {}).get("fail_times") == 9]
print(json.dumps({"news": news, "failing": failing}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_under(path: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            cwd = p.info["cwd"] or ""
        except Exception:  # noqa: BLE001 - a process that vanished meanwhile
            continue
        if p.pid != os.getpid() and (path in cmd or cwd.startswith(path)):
            found.append(p)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh-venv", action="store_true")
    parser.add_argument("--timeout", type=float, default=180, help="seconds for the demo to play out")
    args = parser.parse_args()
    import psutil

    with tempfile.TemporaryDirectory(prefix="quickstart-smoke-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        if not args.fresh_venv:
            os.symlink(ROOT / ".venv", clone / ".venv")
        # As on a new machine: none of this checkout's database, Redis or Django settings.
        # (COVERAGE_* pass: under scripts/coverage the quick start's processes measure too.)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DB_", "REDIS_", "DJANGO_", "JOBS_", "WECHAT_")) and k != "NEXTEVENT_EMBEDDED"}
        env.update(PORT=str(free_port()), FAKE_WECHAT_PORT=str(free_port()), PYTHONUNBUFFERED="1")
        if env.pop("COVERAGE_PROCESS_CONFIG", None):
            # Under scripts/coverage: the clone's processes measure the clone's files with the
            # clone's own .coveragerc (the parent's settings name this checkout's paths).
            env["COVERAGE_PROCESS_START"] = str(clone / ".coveragerc")
        log_path = Path(tmp) / "quickstart.log"
        log = open(log_path, "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen(["./scripts/quickstart"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        problem = None
        status: dict = {}
        try:
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    problem = f"quickstart exited early with {proc.returncode}"
                    break
                if (clone / "var" / "nextevent.sqlite3").exists():
                    out = subprocess.run([str(clone / ".venv/bin/python"), "manage.py", "shell", "-c", STATUS],
                                         cwd=clone, env={**env, "NEXTEVENT_EMBEDDED": "1", "DJANGO_DEBUG": "1"},
                                         capture_output=True, text=True, timeout=60)
                    lines = out.stdout.strip().splitlines()
                    if out.returncode == 0 and lines:
                        status = json.loads(lines[-1])
                        if (status["news"] and set(status["news"]) <= {"published", "archived"}
                                and status["failing"] == ["dead"]):
                            break
                time.sleep(2)
            else:
                problem = f"after {args.timeout:.0f} s the demo is not through: {status}"
            played = time.monotonic() - t0
        finally:
            # Ctrl-C: SIGINT to the whole foreground process group.
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                problem = problem or "quickstart did not stop within 60 s of SIGINT"
            log.close()
            deadline = time.monotonic() + 15
            left = processes_under(str(clone))
            while left and time.monotonic() < deadline:
                time.sleep(0.5)
                left = processes_under(str(clone))
            if left:
                problem = problem or "processes left after SIGINT: " + "; ".join(
                    f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in left if p.is_running())
                for p in left:  # never leave them behind, even when failing
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
        if problem:
            print(f"quickstart smoke: FAILED: {problem}", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
            for name in ("demo.log", "web.log", "fake_wechat.log"):
                f = clone / "var" / name
                if f.exists():
                    print(f"--- var/{name} ---\n{f.read_text(errors='replace')[-1500:]}", file=sys.stderr)
            return 1
        print(f"quickstart smoke: ok (demo news published and failing job dead {played:.0f} s after start; "
              f"stopped by SIGINT, no process left)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
