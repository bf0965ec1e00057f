"""Loops that say they are alive, and a watchdog that replaces one stuck past its bound.

Every network wait of the engine is bounded (JOBS_DB_TIMEOUT, REDIS_SOCKET_TIMEOUT), so a
loop that has not come round for JOBS_LOOP_STUCK_AFTER seconds is stuck where no timeout
reaches: a lock wait longer than the bound, a driver bug, a deadlock inside the process. The
supervisor's watchdog thread (jobs/supervisor.py) watches its own main loop and the
dispatcher's; a cluster whose workers stop claiming is the supervisor's wedge check
(jobs/progress.py). Each restart is logged and reported in Redis, where `jobs stats`, the
dashboard, /readyz and /metrics read it:

- nextevent:stuck:<loop>:<host>:<pid>:<unix ms> -> JSON {loop, host, pid, at, stuck_s}, for
  REPORT_TTL seconds.
"""

from __future__ import annotations

import json
import logging
import time

from nextevent.redis import get_redis

logger = logging.getLogger(__name__)

STUCK_PREFIX = "nextevent:stuck"
REPORT_TTL = 600
MAX_REPORTS_READ = 1000


class Beat:
    """The monotonic time a loop last came round; `beat()` once per turn."""

    def __init__(self, name: str):
        self.name = name
        self.at = time.monotonic()

    def beat(self) -> None:
        self.at = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.at


def report_stuck(loop: str, host: str, pid: int, stuck_s: float) -> None:
    """Never raises: the restart must happen whether or not Redis hears of it."""
    now = time.time()
    try:
        get_redis().set(f"{STUCK_PREFIX}:{loop}:{host}:{pid}:{int(now * 1000)}",
                        json.dumps({"loop": loop, "host": host, "pid": pid, "at": now, "stuck_s": round(stuck_s, 1)}),
                        ex=REPORT_TTL)
    except Exception:
        logger.warning("could not record the stuck %s loop of %s:%s in Redis", loop, host, pid)


def stuck_reports() -> list[dict]:
    """Loops restarted in the last REPORT_TTL seconds, on any host; raises if Redis is away."""
    client = get_redis()
    keys = list(client.scan_iter(match=f"{STUCK_PREFIX}:*", count=200))[:MAX_REPORTS_READ]
    return [json.loads(v) for v in client.mget(keys) if v] if keys else []


def restarts_by_loop(reports: list[dict] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for report in stuck_reports() if reports is None else reports:
        counts[report["loop"]] = counts.get(report["loop"], 0) + 1
    return counts
