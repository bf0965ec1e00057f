"""Internal: one queue's django-q2 cluster, started by `qcluster` with Q_CLUSTER_NAME set
(django-q2 reads it at import time, so each queue needs a fresh process)."""

import os
import signal
import threading
import time

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run one queue's django-q2 cluster (started by qcluster; Q_CLUSTER_NAME selects the queue)."

    def handle(self, *args, **options):
        if not os.environ.get("Q_CLUSTER_NAME"):
            raise CommandError("Q_CLUSTER_NAME must name the queue; use `manage.py qcluster` instead")
        from django_q.cluster import Cluster

        from jobs.liveness import publish_cluster_heartbeat

        parent = os.getppid()
        queue = os.environ["Q_CLUSTER_NAME"]

        def watch():
            while True:
                time.sleep(1)
                if os.getppid() != parent:
                    # The supervisor was killed outright: stop gracefully, not run unsupervised.
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                try:
                    publish_cluster_heartbeat(queue)
                except Exception:  # Redis away: the health check will notice the silence
                    pass

        threading.Thread(target=watch, daemon=True, name="cluster-watch").start()
        cluster = Cluster()
        cluster.start()
        while cluster.sentinel is not None and cluster.sentinel.is_alive():
            cluster.sentinel.join(1)
