"""Memory per buffered analytics event, and the ingest rate through the all-or-nothing
append script, measured on a private redis-server (so nothing else shares its memory).

    DB_NAME=nextevent REDIS_DB=12 .venv/bin/python bench/analytics_memory.py [--events 100000] [--port 16540]

Needs `redis-server` on PATH (started on --port, stopped at the end). Does not touch the
database: news ids are not checked on this path (record_events). Prints, per event shape,
the Redis memory added per event (INFO used_memory before and after, divided by the count),
the stream's own MEMORY USAGE, and what analytics.buffer.accounted_bytes counts for it.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))


def shapes(rnd: random.Random):
    """name -> a function making one event."""
    def minimal():
        return {"news_id": rnd.randrange(1, 5000), "event_type": "view"}

    def typical():  # the mix bench/analytics.py uses
        event = minimal()
        if rnd.random() < 0.7:
            event["user_id"] = f"u{rnd.randrange(50_000)}"
        if rnd.random() < 0.2:
            event["metadata"] = {"ref": rnd.choice(["home", "search", "wechat", "app"]), "pos": rnd.randrange(20)}
        return event

    def largest():  # what one event may hold: a 64-character user id and 4 KB of metadata
        event = minimal()
        event["user_id"] = "".join(rnd.choice("abcdef0123456789") for _ in range(64))
        event["metadata"] = {"k": "".join(rnd.choice("abcdefghij") for _ in range(4096 - len('{"k":""}')))}
        return event

    return {"minimal {n, t}": minimal, "typical mix": typical, "largest allowed": largest}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--port", type=int, default=16540)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if not binary:
        sys.exit("redis-server not found on PATH")
    workdir = tempfile.mkdtemp(prefix="analytics-memory-")
    proc = subprocess.Popen([binary, "--port", str(args.port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", args.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.1)
        os.environ["ANALYTICS_REDIS_URL"] = f"redis://127.0.0.1:{args.port}/0"
        os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
        os.environ["ANALYTICS_BUFFER_MAX_EVENTS"] = "0"
        os.environ["ANALYTICS_BUFFER_MAX_BYTES"] = "0"
        os.environ["ANALYTICS_BATCH_THRESHOLD"] = str(10**12)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nextevent.settings")
        import django

        django.setup()
        from analytics.buffer import accounted_bytes, buffer_redis
        from analytics.validation import fields_of
        from analytics.ingest import STREAM_KEY, record_event, record_events

        client = buffer_redis()
        rnd = random.Random(7)
        print(f"{args.events} events per shape, redis-server {client.info('server')['redis_version']}")
        for name, make in shapes(rnd).items():
            client.flushdb()
            events = [make() for _ in range(args.events)]
            before = client.info("memory")["used_memory"]
            t0 = time.perf_counter()
            for start in range(0, len(events), 1000):
                record_events(events[start:start + 1000])
            many = len(events) / (time.perf_counter() - t0)
            after = client.info("memory")["used_memory"]
            usage = client.memory_usage(STREAM_KEY, samples=0)
            estimate = sum(accounted_bytes(fields_of(e, None)) for e in events) / len(events)
            print(f"  {name:16s}: {(after - before) / len(events):7.1f} bytes/event (used_memory), "
                  f"{usage / len(events):7.1f} (MEMORY USAGE of the stream), {estimate:7.1f} accounted "
                  f"(ANALYTICS_BUFFER_MAX_BYTES); record_events ×1000: {many:,.0f} events/s")
        client.flushdb()
        single = [shapes(rnd)["typical mix"]() for _ in range(20_000)]
        t0 = time.perf_counter()
        for event in single:
            record_event(**event)
        print(f"  record_event, one per call: {len(single) / (time.perf_counter() - t0):,.0f} events/s")
        client.flushdb()
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
