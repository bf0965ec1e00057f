"""Which deaths inside a django-q2 cluster its sentinel may repair, and which need a new cluster.

django-q2's sentinel "reincarnates" any pusher, monitor or worker that dies. That is safe
only when the dead process held none of the locks of the multiprocessing queues between
them, and a SIGKILL does not release those locks (seen: an idle worker killed while it
waited in task_queue.get(), holding the queue's read lock, left every other worker blocked
forever; the cluster was alive, its list filled, nothing ran):
- a worker busy with a task (its timer > 0), recycled (-2) or timed out (0) holds no lock of
  the task queue: reincarnated as usual, so its job runs again within the reaper's 0.5 s;
- an idle worker (-1) may hold the task queue's read lock, the pusher its write lock, the
  monitor the result queue's read lock: the cluster is replaced whole (its main process is
  SIGKILLed; parent-death signals take the rest; the supervisor starts a new one at once).
"""

from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger(__name__)

_installed = False


def _safe_to_reincarnate(sentinel, process) -> bool:
    if process is sentinel.monitor or process is sentinel.pusher:
        return False
    timer = getattr(process, "timer", None)
    if timer is None:
        return False
    return timer.value != -1


def install() -> None:
    """Wrap Sentinel.reincarnate (in the cluster's main process, before the sentinel forks)."""
    global _installed
    if _installed:
        return
    from django_q.cluster import Sentinel

    original = Sentinel.reincarnate

    def reincarnate(self, process):
        if not _safe_to_reincarnate(self, process):
            role = ("monitor" if process is self.monitor else "pusher" if process is self.pusher
                    else "idle worker")
            logger.critical("%s %s (pid %s) died: replacing the whole cluster, whose queues' locks it "
                            "may have held", role, process.name, process.pid)
            try:
                os.kill(self.parent_pid, signal.SIGKILL)  # the cluster's main process
            except ProcessLookupError:
                pass
            os._exit(1)
        return original(self, process)

    Sentinel.reincarnate = reincarnate
    _installed = True
