"""Internal: one queue's django-q2 cluster, started by `qcluster` with Q_CLUSTER_NAME set
(django-q2 reads it at import time, so each queue needs a fresh process).

Process tree guarantees (jobs/proctree.py): this process dies with the supervisor that
started it (parent-death SIGKILL), and every process django-q2 forks below it (sentinel,
then pusher, monitor and workers) dies with its own parent, so nothing of the cluster can
outlive it. The supervisor also runs it in its own session and kills that group whole."""

import os
import signal
import socket
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, no_translations

class Command(BaseCommand):
    help = "Run one queue's django-q2 cluster (started by qcluster; Q_CLUSTER_NAME selects the queue)."

    @no_translations  # workers, their logs and this output stay English whatever LANGUAGE_CODE says
    def handle(self, *args, **options):
        if not os.environ.get("Q_CLUSTER_NAME"):
            raise CommandError("Q_CLUSTER_NAME must name the queue; use `manage.py qcluster` instead")
        from jobs import proctree
        from jobs.proctree import SUPERVISOR_ENV
        from jobs.progress import CLUSTER_ENV

        supervisor = int(os.environ.get(SUPERVISOR_ENV) or 0)
        if supervisor:
            # A crashed supervisor takes its clusters along; its restart re-runs their jobs at
            # once (their holders are dead on this host, see jobs/reaper.py).
            proctree.die_with_parent(signal.SIGKILL, supervisor)
        proctree.install_fork_hook()
        # Inherited by the forked workers: they note their claims under this cluster's name.
        os.environ[CLUSTER_ENV] = f"{socket.gethostname()}:{os.getpid()}"

        from django_q.cluster import Cluster

        from jobs import cluster_guard

        cluster_guard.install()
        from jobs.services.completing import defer_in_workers

        defer_in_workers()

        from jobs.liveness import publish_cluster_heartbeat

        parent = os.getppid()
        queue = os.environ["Q_CLUSTER_NAME"]

        def watch():
            stopping_since = None
            while True:
                time.sleep(1)
                if os.getppid() != parent and stopping_since is None:
                    # The parent is gone and no death signal came (not Linux, or started by
                    # hand): stop gracefully rather than run unsupervised...
                    stopping_since = time.monotonic()
                    os.kill(os.getpid(), signal.SIGTERM)
                if stopping_since is not None and time.monotonic() - stopping_since > settings.JOBS_SHUTDOWN_GRACE + 5:
                    # ...but not forever: a drain that hangs must not leave the tree behind.
                    if supervisor:
                        proctree.kill_group(os.getpgrp())
                    os._exit(1)
                try:
                    publish_cluster_heartbeat(queue)
                except Exception:  # Redis away: the health check will notice the silence
                    pass

        threading.Thread(target=watch, daemon=True, name="cluster-watch").start()
        cluster = Cluster()
        cluster.start()
        while cluster.sentinel is not None and cluster.sentinel.is_alive():
            cluster.sentinel.join(1)
