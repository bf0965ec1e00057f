"""Prometheus metrics for /metrics, computed at scrape time from the ledger and Redis.

Why not prometheus-client counters incremented by the workers: each queue runs many forked
worker processes on several hosts, each would keep its own counts, and they vanish when a
worker is recycled. The ledger already records every job's outcome and timings, so a
custom collector reads the truth from it, with bounded queries:

- live counts by queue and state: an index-only COUNT grouped by (queue, state);
- processed / failed / duration / lateness: jobs finished in the last WINDOW (one hour),
  from the per-minute roll-up (jobs/monitoring/rollup.py: JobStat rows, with the
  histograms) plus the ledger's few minutes since it. These are gauges over a
  sliding window ("in the last hour"), and the histograms are gauge histograms: read them
  with histogram_quantile() directly, not with rate().
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import timedelta

from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from jobs import monitoring
from jobs.monitoring import rollup
from jobs.models import Heartbeat, JobState
from jobs.queues import QUEUES
from jobs.registry import job_types

logger = logging.getLogger(__name__)

WINDOW = timedelta(hours=1)
DURATION_BUCKETS = rollup.DURATION_BUCKETS  # kept with the roll-up, which stores the histograms
LATENESS_BUCKETS = rollup.LATENESS_BUCKETS


def window_stats(now=None) -> dict[tuple[str, str, str], rollup.Totals]:
    """(queue, job_type, state) -> Totals for jobs completed or dead within WINDOW: the
    per-minute roll-up plus the ledger's last few minutes (jobs/monitoring/rollup.py)."""
    now = now or timezone.now()
    return rollup.totals(now - WINDOW, now, histograms=True)


def _bucket_pairs(cumulative: list[int], total: int, bounds) -> list[tuple[str, float]]:
    return [(str(float(b)), n) for b, n in zip(bounds, cumulative)] + [("+Inf", total)]


class LedgerCollector:
    """Collects everything at scrape time; a failing source (database, Redis) drops only its
    own families and shows as nextevent_up{component=...} 0."""

    def collect(self):
        started = time.monotonic()
        now = timezone.now()
        up = GaugeMetricFamily("nextevent_up", "1 if the component answered during this scrape",
                               labels=["component"])
        try:
            yield from self._ledger(now)
            up.add_metric(["database"], 1)
        except Exception:
            logger.exception("metrics: the ledger could not be read")
            up.add_metric(["database"], 0)
        redis = monitoring.redis_state()
        up.add_metric(["redis"], 0 if redis["error"] else 1)
        if not redis["error"]:
            yield from self._redis(redis)
        yield up
        took = GaugeMetricFamily("nextevent_metrics_collect_seconds", "Time this scrape spent collecting")
        took.add_metric([], time.monotonic() - started)
        yield took

    def _ledger(self, now):
        jobs = GaugeMetricFamily("nextevent_jobs", "Jobs in the ledger by queue and state "
                                 "(live states and dead; completed and cancelled are history)",
                                 labels=["queue", "state"])
        for queue, states in monitoring.ledger_counts().items():
            for state, n in states.items():
                jobs.add_metric([queue, state], n)
        age = GaugeMetricFamily("nextevent_queue_oldest_pending_age_seconds",
                                "Age of the oldest pending job's wake-up (0 if none)", labels=["queue"])
        for queue, seconds in monitoring.oldest_pending(now).items():
            age.add_metric([queue], seconds)
        paused = GaugeMetricFamily("nextevent_queue_paused", "1 if the queue is paused", labels=["queue"])
        paused_now = monitoring.pauses()
        for queue in QUEUES:
            paused.add_metric([queue], 1 if queue in paused_now else 0)

        processed = GaugeMetricFamily("nextevent_jobs_processed_last_hour",
                                      "Jobs that finished (completed or dead) in the last hour",
                                      labels=["queue", "job_type"])
        failed = GaugeMetricFamily("nextevent_jobs_failed_last_hour",
                                   "Jobs that went dead (out of retries or permanent error) in the last hour",
                                   labels=["queue", "job_type"])
        durations = GaugeHistogramMetricFamily("nextevent_job_duration_seconds",
                                               "Duration of the last attempt of jobs finished in the last hour",
                                               labels=["queue", "job_type"])
        lateness = GaugeHistogramMetricFamily("nextevent_job_lateness_seconds",
                                              "started_at - run_at of the last attempt of jobs finished "
                                              "in the last hour", labels=["queue", "job_type"])
        totals: dict[tuple[str, str], list[int]] = {(jt.queue, jt.name): [0, 0] for jt in job_types().values()}
        merged: dict[tuple[str, str], rollup.Totals] = {}
        expired = GaugeMetricFamily("nextevent_jobs_expired_last_hour",
                                    "Jobs that expired unrun (not started by their deadline) in the last hour",
                                    labels=["queue", "job_type"])
        expired_totals: dict[tuple[str, str], int] = {(jt.queue, jt.name): 0 for jt in job_types().values()}
        for (queue, job_type, state), stat in window_stats(now).items():
            if state == JobState.EXPIRED:
                expired_totals[(queue, job_type)] = expired_totals.get((queue, job_type), 0) + stat.count
                continue
            if not stat.timed:
                continue  # as before the roll-up: only jobs that started have a duration and lateness
            key = (queue, job_type)
            total = totals.setdefault(key, [0, 0])
            total[0] += stat.timed
            if state == JobState.DEAD:
                total[1] += stat.timed
            merged.setdefault(key, rollup.Totals()).add(stat.timed, stat.timed, stat.duration_sum, stat.lateness_sum,
                                                         stat.duration_buckets, stat.lateness_buckets)
        for (queue, job_type), (n, dead) in sorted(totals.items()):
            processed.add_metric([queue, job_type], n)
            failed.add_metric([queue, job_type], dead)
        for (queue, job_type), n in sorted(expired_totals.items()):
            expired.add_metric([queue, job_type], n)
        for (queue, job_type), row in sorted(merged.items()):
            durations.add_metric([queue, job_type], _bucket_pairs(row.duration_buckets, row.count, DURATION_BUCKETS),
                                 row.duration_sum)
            lateness.add_metric([queue, job_type], _bucket_pairs(row.lateness_buckets, row.count, LATENESS_BUCKETS),
                                row.lateness_sum)

        health = monitoring.health_heartbeat(now)
        health_age = GaugeMetricFamily("nextevent_health_check_age_seconds",
                                       "Seconds since the 30-second health check last ran (+Inf if never)")
        health_age.add_metric([], health["age_s"] if health else math.inf)
        health_ok = GaugeMetricFamily("nextevent_health_check_ok", "1 if the last health check found no problem")
        health_ok.add_metric([], 1 if health and health["ok"] else 0)
        dispatchers = GaugeMetricFamily("nextevent_dispatchers_alive",
                                        f"Dispatchers whose heartbeat is under {monitoring.DISPATCHER_ALIVE_SECONDS} s old")
        dispatchers.add_metric([], Heartbeat.objects.filter(
            kind="dispatcher", seen_at__gte=now - timedelta(seconds=monitoring.DISPATCHER_ALIVE_SECONDS)).count())
        yield from (jobs, age, paused, processed, failed, expired, durations, lateness, health_age, health_ok, dispatchers)

    def _redis(self, redis):
        depth = GaugeMetricFamily("nextevent_queue_depth", "Wake-ups waiting in the queue's Redis list",
                                  labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue], redis["depths"].get(queue, 0))
        clusters = GaugeMetricFamily("nextevent_queue_clusters", "Live django-q2 clusters serving the queue",
                                     labels=["queue"])
        workers = GaugeMetricFamily("nextevent_queue_workers_alive", "Live worker processes serving the queue",
                                    labels=["queue"])
        for queue in QUEUES:
            alive = [c for c in redis["clusters"] if c.get("queue") == queue]
            clusters.add_metric([queue], len(alive))
            workers.add_metric([queue], sum(c.get("workers_alive", 0) for c in alive))
        restarts = GaugeMetricFamily("nextevent_loop_restarts_recent",
                                     "Stuck loops the watchdogs restarted in the last 10 minutes (dispatcher, "
                                     "supervisor, cluster)", labels=["loop"])
        for loop, count in sorted(redis.get("loops", {}).items()):
            restarts.add_metric([loop], count)
        yield from (depth, clusters, workers, restarts)
        for gauge in redis["gauges"]:
            family = GaugeMetricFamily(gauge.name, gauge.help)
            family.add_metric([], gauge.value)
            yield family


registry = CollectorRegistry(auto_describe=False)
registry.register(LedgerCollector())

_cache_lock = threading.Lock()
_cache: dict[str, tuple[float, bytes]] = {}


def render(accept_header: str | None, *, cache_seconds: float = 0) -> tuple[bytes, str]:
    """The exposition in the format the scraper asked for (Prometheus text or OpenMetrics).
    Answers are reused for `cache_seconds` so repeated requests cost one set of queries."""
    encoder, content_type = choose_encoder(accept_header or "")
    with _cache_lock:
        cached = _cache.get(content_type)
        if cache_seconds > 0 and cached and time.monotonic() - cached[0] < cache_seconds:
            return cached[1], content_type
        body = encoder(registry)
        _cache[content_type] = (time.monotonic(), body)
    return body, content_type
