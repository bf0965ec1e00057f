"""Deferred completions in a cluster's worker process: a finished job is recorded in the
transaction of the same worker's next claim (one commit per job instead of two), or by a
flusher thread JOBS_COMPLETION_FLUSH_MS after it finished if no next claim came first.

Why: on MariaDB with a durable commit, every commit is a redo-log flush; the claim and the
completion were two per job, the producer's INSERT a third (bench/engine_cpu.py). River's
batch completer is the model (shared notes, anchors.md).

What it costs, and why that is acceptable:
- `completed` shows in the ledger up to JOBS_COMPLETION_FLUSH_MS later than the handler
  returned (10 ms by default).
- A worker killed in that window runs the job again once its death is seen (the reaper,
  0.5 s): at least once, as for a kill just before the completion's UPDATE; the window is
  longer, not new. A worker that stops or is recycled writes what it holds before it exits.
- Each write is still fenced by state and attempt, so a job whose lease was taken over is
  never marked completed by the old attempt.

Only in django-q2 worker processes (enabled through django-q2's post_spawn signal by the
cluster command, jobs/management/commands/jobs_cluster.py). Everything else (the web, tests calling run_job, the Tasks API's own paths)
writes at once, so there run_job returning means the ledger says completed.
"""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing import util as mp_util

from django.conf import settings
from django.db import close_old_connections, connection

from jobs.services.running import Completion, write_completion

logger = logging.getLogger(__name__)

# Bounded retries for the flusher when the database is away: past them the completion is
# given up with an error and the job runs again when its lease runs out (at least once).
FLUSH_ATTEMPTS = 5
# How long an exiting worker waits for a write its flusher is doing (its retries sleep 2 s).
EXIT_WAIT_SECONDS = 5.0


class DeferredCompletions:
    def __init__(self):
        self._cond = threading.Condition()
        self._items: list[tuple[float, Completion]] = []
        self._thread: threading.Thread | None = None
        self._idle = False  # the flusher waits with no deadline: only an add() wakes it
        self._writing = 0  # completions the flusher has taken and not finished writing
        self.enabled = False

    def enable(self) -> None:
        """Called once in a worker process, at its start (after the fork)."""
        self.enabled = settings.JOBS_COMPLETION_FLUSH_MS > 0 and connection.vendor == "mysql"
        if self.enabled:
            # Runs in the worker's main thread as it exits normally (stop, recycle), before
            # the process is gone; daemon threads are not waited for.
            mp_util.Finalize(self, self.flush_now, exitpriority=100)

    def add(self, done: Completion) -> None:
        with self._cond:
            self._items.append((time.monotonic(), done))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="completion-flusher", daemon=True)
                self._thread.start()
            elif self._idle:
                # Woken only from an idle wait: a flusher already waiting for a deadline wakes
                # by itself, which saves a thread switch per job on a busy worker.
                self._cond.notify()

    def take(self) -> list[Completion]:
        """Everything held, now owned by the caller (the next claim writes it)."""
        with self._cond:
            items, self._items = self._items, []
        return [done for _, done in items]

    def give_back(self, items: list[Completion]) -> None:
        """A claim that could not write what it took (the database went away) returns it."""
        if items:
            with self._cond:
                self._items[:0] = [(time.monotonic(), done) for done in items]
                self._cond.notify()

    def flush_now(self) -> None:
        """At the worker's exit: wait (bounded) for a write the flusher is doing, then write
        the rest here. Whatever is still unwritten is logged; its job runs again when its
        lease runs out."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._writing == 0, timeout=EXIT_WAIT_SECONDS):
                logger.error("%s completions still being written at exit; their jobs run again when their "
                             "leases run out", self._writing)
        self._write(self.take())

    def _write(self, items: list[Completion]) -> None:
        for done in items:
            for attempt in range(1, FLUSH_ATTEMPTS + 1):
                try:
                    close_old_connections()
                    write_completion(done)
                    break
                except Exception:
                    if attempt == FLUSH_ATTEMPTS:
                        logger.exception("job %s: completion not recorded; it will run again when its lease "
                                         "runs out", done.job.pk)
                    else:
                        time.sleep(0.2 * attempt)

    def _run(self) -> None:
        delay = settings.JOBS_COMPLETION_FLUSH_MS / 1000
        while True:
            with self._cond:
                while not self._items:
                    self._idle = True
                    self._cond.wait()
                self._idle = False
                wait = self._items[0][0] + delay - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                items, self._items = self._items, []
                self._writing = len(items)
            try:
                # This thread's own database connection: the main thread may be using its own.
                self._write([done for _, done in items])
            finally:
                with self._cond:
                    self._writing = 0
                    self._cond.notify_all()


deferred = DeferredCompletions()


def _worker_spawned(**_kwargs) -> None:
    deferred.enable()


def defer_in_workers() -> None:
    """In a cluster's main process, before django-q2 forks: each worker process enables
    deferral as it starts (django-q2 sends post_spawn there, and only there)."""
    from django_q.signals import post_spawn

    post_spawn.connect(_worker_spawned, dispatch_uid="jobs.completing.defer_in_workers")
