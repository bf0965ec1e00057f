"""Cluster liveness: each queue's cluster process publishes a short-lived Redis key every
second; the health check and `jobs stats` read them. django-q2's own stat keys do not say
which queue a cluster serves."""

from __future__ import annotations

import json
import os
import socket
import time

import psutil
from django.conf import settings

from nextevent.redis import get_redis

PREFIX = "nextevent:cluster"
TTL_SECONDS = 5


def publish_cluster_heartbeat(queue: str) -> None:
    me = psutil.Process()
    # main -> sentinel -> workers + monitor + pusher
    processes = len(me.children(recursive=True))
    data = {"queue": queue, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time(),
            "expected_workers": settings.JOBS_QUEUES.get(queue), "workers_alive": max(processes - 3, 0)}
    get_redis().set(f"{PREFIX}:{queue}:{data['host']}:{data['pid']}", json.dumps(data), ex=TTL_SECONDS)


def live_clusters() -> list[dict]:
    client = get_redis()
    keys = list(client.scan_iter(match=f"{PREFIX}:*", count=200))[:1000]
    if not keys:
        return []
    return [json.loads(v) for v in client.mget(keys) if v]
