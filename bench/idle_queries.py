"""Database statements per second of one idle qcluster, counted on the wire.

    .venv/bin/python bench/idle_queries.py [--seconds 30] [--queues default]

MariaDB's global counters (SHOW GLOBAL STATUS 'Questions') count every client of a shared
server, and performance_schema is off here, so this counts the cluster's own traffic: it
runs a small TCP relay in front of MariaDB, starts one real qcluster (its own database,
DB_NAME default nextevent_bench_idle, Redis REDIS_DB default 8) with DB_PORT pointing at
the relay, lets it settle, then counts the MySQL command packets (COM_QUERY and the rest)
it sends during --seconds with no job in the ledger. Needs the server on TCP 127.0.0.1
without TLS (DB_HOST=localhost would use the Unix socket, which the relay cannot see).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COMMANDS = {0x03: "query", 0x0e: "ping", 0x01: "quit", 0x02: "init_db", 0x16: "prepare", 0x17: "execute"}


class CountingRelay:
    """Relays TCP to the real server; counts client command packets (sequence id 0)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> Counter:
        with self.lock:
            return Counter(self.counts)

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if not count:
                    continue
                buf += data
                while len(buf) >= 4:
                    length = int.from_bytes(buf[:3], "little")
                    if len(buf) < 4 + length:
                        break
                    if buf[3] == 0 and length:
                        with self.lock:
                            self.counts[COMMANDS.get(buf[4], f"cmd{buf[4]:#x}")] += 1
                    buf = buf[4 + length:]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopped = True
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--settle", type=float, default=10)
    parser.add_argument("--queues", default="default")
    args = parser.parse_args()

    from bench.common import Cluster, machine, setup_django

    setup_django(os.environ.get("DB_NAME", "nextevent_bench_idle"), os.environ.get("REDIS_DB", "8"))
    from jobs.models import Job
    from nextevent.redis import get_redis

    Job.objects.all().delete()
    get_redis().flushdb()
    relay = CountingRelay(("127.0.0.1", int(os.environ.get("DB_PORT", 3306))))
    cluster = Cluster(args.queues.split(","), env={"DB_HOST": "127.0.0.1", "DB_PORT": str(relay.port)},
                      log="/tmp/bench-idle-qcluster.log")
    try:
        cluster.wait_ready()
        time.sleep(args.settle)
        before = relay.snapshot()
        time.sleep(args.seconds)
        after = relay.snapshot()
    finally:
        cluster.stop()
        relay.close()
    delta = after - before
    total = sum(delta.values())
    print(f"machine: {machine()}")
    print(f"idle qcluster ({args.queues}), {args.seconds:.0f} s: {total / args.seconds:.1f} statements/s "
          f"({', '.join(f'{k} {v / args.seconds:.1f}/s' for k, v in sorted(delta.items()))})")


if __name__ == "__main__":
    main()
