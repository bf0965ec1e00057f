"""HTTP analytics ingest through the production web server: prints its figures.

    DB_NAME=nextevent_http_bench REDIS_DB=10 .venv/bin/python bench/http_ingest.py \
        [--workers 5] [--clients 4] [--seconds 10]

Starts a real gunicorn with deploy/gunicorn.conf.py on loopback (--workers sync workers; the
config's default is 2 x cores + 1), then, from --clients client processes on the same machine,
POSTs to /api/analytics/events for --seconds: first one event per request, then 1,000 per
request. Counts only events answered 202 and checks the buffer grew by exactly that many.
Client and server share the machine's cores, so the figures are a floor for a separate
load generator. Deletes the events it added at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import machine, setup_django  # noqa: E402
from bench.http_server import Gunicorn  # noqa: E402


def _client(args: tuple[int, bytes, float]) -> tuple[int, int, int]:
    """One load process: POSTs `body` until `until` (a time.time()); (requests, events, errors)."""
    port, body, until = args
    requests = events = errors = 0
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.time() < until:
        try:
            conn.request("POST", "/api/analytics/events", body, headers)
            response = conn.getresponse()
            data = response.read()
            if response.status == 202:
                events += json.loads(data)["accepted"]
            else:
                errors += 1
            if response.getheader("Connection", "").lower() == "close":
                conn.close()  # sync workers close after each response; reconnect
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
        requests += 1
    conn.close()
    return requests, events, errors


def run(port: int, per_request: int, clients: int, seconds: float) -> dict:
    from analytics.ingest import STREAM_KEY
    from nextevent.redis import get_redis

    events = [{"news_id": 1 + i % 50, "event_type": "view", "user_id": f"u{i}"} for i in range(per_request)]
    body = json.dumps(events[0] if per_request == 1 else {"events": events}).encode()
    before = int(get_redis().xlen(STREAM_KEY))
    until = time.time() + seconds
    started = time.perf_counter()
    with multiprocessing.Pool(clients) as pool:
        results = pool.map(_client, [(port, body, until)] * clients)
    elapsed = time.perf_counter() - started
    requests, accepted, errors = (sum(r[i] for r in results) for i in range(3))
    added = int(get_redis().xlen(STREAM_KEY)) - before
    return {"per_request": per_request, "requests": requests, "events": accepted, "errors": errors,
            "seconds": round(elapsed, 2), "events_per_s": round(accepted / elapsed),
            "requests_per_s": round(requests / elapsed), "buffer_grew_by": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=(os.cpu_count() or 1) * 2 + 1)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    setup_django(os.environ.get("DB_NAME", "nextevent_http_bench"), os.environ.get("REDIS_DB", "10"))
    from analytics.ingest import STREAM_KEY
    from nextevent.redis import get_redis

    if get_redis().exists(STREAM_KEY):
        raise SystemExit(f"{STREAM_KEY} is not empty in this Redis db: use another REDIS_DB")
    env = {**os.environ, "LOG_LEVEL": "WARNING",
           # No batch job is enqueued while measuring: no qcluster runs here to drain it.
           "ANALYTICS_BATCH_THRESHOLD": str(10**9)}
    with tempfile.TemporaryDirectory() as tmp:
        server = Gunicorn(env, workers=args.workers, log_dir=Path(tmp)).wait_ready()
        try:
            print(f"machine: {machine()}")
            print(f"gunicorn: {args.workers} sync workers (deploy/gunicorn.conf.py), {args.clients} client "
                  f"processes on the same machine, {args.seconds:g} s per figure, loopback")
            for per_request in (1, 1000):
                result = run(server.port, per_request, args.clients, args.seconds)
                # Other work on the machine shows here: the figures are only as good as this.
                result["load_average_1min"] = round(os.getloadavg()[0], 2)
                print(json.dumps(result))
        finally:
            server.stop()
            get_redis().delete(STREAM_KEY)


if __name__ == "__main__":
    main()
