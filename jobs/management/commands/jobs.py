"""`manage.py jobs`: see the queues, inspect and recover jobs from a shell.

    jobs stats                      per queue counts, throughput, oldest pending; clusters
    jobs list [--queue Q] [--state S] [--type T] [--subject S] [--limit N]
    jobs show ID                    payload, attempts, every error with its traceback
    jobs retry ID... | --all-dead [--queue Q]
    jobs cancel ID... [--by WHO]    any unfinished job; a running one is asked to stop, then
                                    ended with its worker after its type's cancel grace
    jobs run-now ID... [--by WHO]   scheduled or retry-waiting jobs due now (payload, key kept)
    jobs run-now --schedule ID      one extra slot of a periodic task now (next_run unchanged)
    jobs delete ID...               any job that is not running
    jobs pause QUEUE / jobs resume QUEUE

Every subcommand takes --json (one JSON document on stdout, for scripts).

Exit codes (scripts can rely on them):
    0  done: everything asked for was found and acted on (pause/resume are idempotent)
    1  nothing matched, a job was not found, or some jobs were not in a state the action
       applies to (the output says which)
    2  usage error (unknown subcommand, queue or state, bad arguments)
    3  MySQL or Redis could not be reached (output, if any, is partial)
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError, no_translations
from django.db import DatabaseError
from django.utils import timezone
from redis.exceptions import RedisError

from jobs import monitoring, services
from jobs.models import CANCELLABLE_STATES, RETRYABLE_STATES, RUN_NOW_STATES, Job, JobState
from jobs.queues import QUEUES

EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
MAX_LIMIT = 1000
RETRY_BATCH = 500


def _local(value: datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _age(seconds: float | None) -> str:
    if not seconds:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render_table(headers: list[str], rows: list[list], right: set[int] = frozenset()) -> str:
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Inspect the job queues and recover jobs. Exit codes: 0 ok, 1 nothing matched / not found, " \
           "2 usage error, 3 MySQL or Redis unavailable."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="{stats,list,show,retry,cancel,"
                                    "run-now,delete,pause,resume}")

        p = sub.add_parser("stats", help="per queue: counts by state, throughput, oldest pending; clusters")
        p.add_argument("--json", action="store_true", help="print JSON")

        p = sub.add_parser("list", help="list jobs, newest first")
        p.add_argument("--queue", choices=QUEUES)
        p.add_argument("--state", choices=JobState.values)
        p.add_argument("--type", dest="job_type", metavar="TYPE", help="job type, e.g. news:scheduled_publisher")
        p.add_argument("--subject", metavar="S", help="jobs about this subject, e.g. news:42")
        p.add_argument("--limit", type=int, default=50, help=f"at most this many (1-{MAX_LIMIT}, default 50)")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("show", help="one job: payload, attempts, every error")
        p.add_argument("job_id", type=int, metavar="ID")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("retry", help="run dead or retry-waiting jobs again now (attempts reset)")
        p.add_argument("job_ids", type=int, nargs="*", metavar="ID")
        p.add_argument("--all-dead", action="store_true", help="every dead job (of --queue, if given)")
        p.add_argument("--queue", choices=QUEUES, help="with --all-dead: only this queue")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("cancel", help="cancel unfinished jobs; running ones are asked to stop, and ended "
                                          "with their worker process after their type's cancel grace")
        p.add_argument("job_ids", type=int, nargs="+", metavar="ID")
        p.add_argument("--by", default="", help="who cancelled (default: cli:<os user>)")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("run-now", help="make scheduled or retry-waiting jobs due now, or run one extra slot "
                                           "of a periodic task now")
        p.add_argument("job_ids", type=int, nargs="*", metavar="ID")
        p.add_argument("--schedule", type=int, metavar="SCHEDULE_ID",
                       help="a periodic task's Schedule id: one extra slot now, next_run unchanged")
        p.add_argument("--by", default="", help="who asked (default: cli:<os user>)")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("delete", help="delete jobs that are not running")
        p.add_argument("job_ids", type=int, nargs="+", metavar="ID")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("pause", help="pause a queue: its jobs wait, nothing is lost")
        p.add_argument("queue", choices=QUEUES)
        p.add_argument("--by", default="", help="who paused it (default: cli:<os user>)")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("resume", help="resume a paused queue")
        p.add_argument("queue", choices=QUEUES)
        p.add_argument("--json", action="store_true")

    @no_translations  # the CLI stays English whatever LANGUAGE_CODE says (operators grep it)
    def handle(self, *args, subcommand, **options):
        self.as_json = options.pop("json", False)
        try:
            getattr(self, f"do_{subcommand.replace('-', '_')}")(**options)
        except (DatabaseError, RedisError) as exc:
            raise CommandError(f"{type(exc).__name__}: {exc}", returncode=EXIT_UNAVAILABLE) from exc

    # ------------------------------------------------------------ output

    def emit(self, data, text: str) -> None:
        self.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) if self.as_json else text)

    # ------------------------------------------------------------ read

    def do_stats(self, **_):
        now = timezone.now()
        redis = monitoring.redis_state()
        overview = monitoring.queue_overview(now, redis=redis)
        clusters = monitoring.cluster_rows(redis["clusters"], now)
        dispatchers = monitoring.dispatcher_rows(now)
        health = monitoring.health_heartbeat(now)
        data = {"at": now.isoformat(), "queues": overview, "clusters": clusters, "dispatchers": dispatchers,
                "health": health, "gauges": {g.name: g.value for g in redis["gauges"]}, "redis_error": redis["error"],
                "loop_restarts": redis.get("loops", {})}
        rows = [[q, "paused" if r["paused"] else "", r["scheduled"], r["pending"], r["active"], r["retry"], r["dead"],
                 "?" if r["depth"] is None else r["depth"], _age(r["oldest_pending_age_s"]), r["completed_1h"],
                 r["failed_1h"], r["completed_today"], r["failed_today"], r["expired_today"], r["workers_alive"]]
                for q, r in overview.items()]
        text = [render_table(["QUEUE", "", "SCHED", "PEND", "ACTIVE", "RETRY", "DEAD", "DEPTH", "OLDEST PENDING",
                              "DONE 1H", "FAILED 1H", "DONE TODAY", "FAILED TODAY", "EXPIRED TODAY", "WORKERS"],
                             rows, right=set(range(2, 15))), ""]
        stuck = [f"{q} stalled (wake-ups waiting, no claim for "
                 f"{_age(r['last_claim_age_s']) if r['last_claim_age_s'] else 'ever'})"
                 for q, r in overview.items() if r.get("stalled")]
        stuck += [f"{q}: {r['wedged_restarts']} wedged cluster(s) restarted in the last 10 min" for q, r in
                  overview.items() if r.get("wedged_restarts")]
        stuck += [f"{count} stuck {loop} loop(s) restarted in the last 10 min"
                  for loop, count in redis.get("loops", {}).items() if count and loop != "cluster"]
        text += [f"PROBLEM: {line}" for line in stuck] + ([""] if stuck else [])
        if clusters:
            text.append(render_table(
                ["CLUSTER", "QUEUE", "WORKERS ALIVE", "EXPECTED", "LAST HEARTBEAT"],
                [[f"{c['host']}:{c['pid']}", c["queue"], c["workers_alive"], c["workers_expected"],
                  f"{c['last_seen_s']} s ago"] for c in clusters], right={2, 3, 4}))
        else:
            text.append("clusters: none alive (start them with `manage.py qcluster`)")
        text.append("")
        if dispatchers:
            text.append(render_table(["DISPATCHER", "STATE", "LAST HEARTBEAT"],
                                     [[d["name"], "alive" if d["alive"] else "silent", f"{d['last_seen_s']} s ago"]
                                      for d in dispatchers], right={2}))
        else:
            text.append("dispatchers: none seen in the last hour")
        if health:
            state = "ok" if health["ok"] else "; ".join(health["problems"])
            text.append(f"health check: {health['age_s']} s ago: {state}")
        else:
            text.append("health check: never ran")
        for gauge in redis["gauges"]:
            text.append(f"{gauge.label}: {gauge.value:g}")
        self.emit(data, "\n".join(text))
        if redis["error"]:
            raise CommandError(f"Redis unavailable ({redis['error']}); depths and clusters unknown",
                               returncode=EXIT_UNAVAILABLE)

    def do_list(self, *, queue, state, job_type, subject, limit, **_):
        if not 1 <= limit <= MAX_LIMIT:
            raise CommandError(f"--limit must be from 1 to {MAX_LIMIT}, got {limit}", returncode=EXIT_USAGE)
        jobs = monitoring.job_list(queue=queue, state=state, job_type=job_type, subject=subject, limit=limit)
        rows = [[j.pk, j.job_type, j.queue, j.state, j.attempts, _local(j.run_at), j.subject,
                 monitoring.first_line(j.last_error, 60)] for j in jobs]
        self.emit([monitoring.job_summary(j) for j in jobs],
                  render_table(["ID", "TYPE", "QUEUE", "STATE", "ATT", "RUN AT", "SUBJECT", "LAST ERROR"], rows,
                               right={0, 4}) if jobs else "no jobs match")
        if not jobs:
            raise CommandError("no jobs match", returncode=EXIT_NOTHING)

    def do_show(self, *, job_id, **_):
        job = Job.objects.filter(pk=job_id).first()
        if job is None:
            if self.as_json:
                self.emit(None, "")
            raise CommandError(f"job {job_id} not found", returncode=EXIT_NOTHING)
        data = monitoring.job_detail(job)
        lines = [f"job {job.pk}  {job.job_type}  [{job.state}]", ""]
        fields = [("queue", job.queue), ("attempts", f"{job.attempts} (max retries {job.max_retries})"),
                  ("timeout", f"{job.timeout} s"), ("run at", _local(job.run_at)),
                  ("created", _local(job.created_at)), ("dispatched", _local(job.dispatched_at)),
                  ("started", _local(job.started_at)), ("finished", _local(job.finished_at)),
                  ("worker", job.worker or "-"), ("subject", job.subject or "-"), ("unique key", job.unique_key or "-"),
                  ("result", job.result or "-"), ("priority", job.priority),
                  ("expires at", _local(job.expires_at))]
        if job.waiting_reason:
            fields.append(("waiting", job.waiting_reason))
        if job.cancel_requested_at or job.cancelled_at:
            fields.append(("cancel", f"asked {_local(job.cancel_requested_at)}, done {_local(job.cancelled_at)} "
                                     f"by {job.cancelled_by or '?'}"))
        if job.run_now_at:
            fields.append(("run now", f"{_local(job.run_now_at)} by {job.run_now_by or '?'}"))
        if job.started_at:
            fields.append(("lateness", f"{(job.started_at - job.run_at).total_seconds():.3f} s (last attempt)"))
        lines += [f"  {k:<12}{v}" for k, v in fields]
        lines += ["", "payload:"] + ["  " + line for line in json.dumps(job.payload, indent=2,
                                                                        ensure_ascii=False).splitlines()]
        errors = list(job.errors or [])
        lines += ["", f"errors ({len(errors)}):" if errors else "errors: none"]
        for e in errors:
            lines.append(f"  attempt {e.get('attempt', '?')} at {e.get('at', '?')} on {e.get('worker') or '?'}:")
            lines.append(f"    {e.get('error', '')}")
            lines += ["      " + line for line in (e.get("traceback") or "").rstrip().splitlines()]
        if job.last_error and not errors:
            lines += ["", "last error:"] + ["  " + line for line in job.last_error.splitlines()]
        self.emit(data, "\n".join(lines))

    # ------------------------------------------------------------ act

    def _report(self, verb: str, requested: list[int], done: int, before: dict[int, str], eligible: tuple,
                extra: dict | None = None) -> None:
        """Print what happened to each requested id; exit 1 unless every one was acted on."""
        missing = [i for i in requested if i not in before]
        wrong_state = {i: before[i] for i in requested if i in before and before[i] not in eligible}
        skipped = len(requested) - len(missing) - len(wrong_state) - done
        data = {"action": verb, "requested": requested, verb: done, "not_found": missing,
                "wrong_state": wrong_state, "skipped": max(skipped, 0), **(extra or {})}
        lines = [f"{verb} {done} of {len(requested)} job(s)"]
        if missing:
            lines.append(f"not found: {', '.join(map(str, missing))}")
        if wrong_state:
            lines.append("not " + verb + " (state): " + ", ".join(f"{i} ({s})" for i, s in wrong_state.items()))
        if skipped > 0:
            lines.append(f"{skipped} left as they were (changed meanwhile, or a newer live job holds the unique key)")
        self.emit(data, "\n".join(lines))
        if done < len(requested) or not requested:
            raise CommandError(f"{len(requested) - done} of {len(requested)} job(s) not {verb}",
                               returncode=EXIT_NOTHING)

    @staticmethod
    def _states(ids) -> dict[int, str]:
        return dict(Job.objects.filter(pk__in=list(ids)).values_list("pk", "state"))

    def do_retry(self, *, job_ids, all_dead, queue, **_):
        if all_dead == bool(job_ids):
            raise CommandError("give job ids or --all-dead (not both)", returncode=EXIT_USAGE)
        if queue and not all_dead:
            raise CommandError("--queue goes with --all-dead", returncode=EXIT_USAGE)
        if all_dead:
            dead = Job.objects.filter(state=JobState.DEAD)
            if queue:
                dead = dead.filter(queue=queue)
            ids = list(dead.order_by("pk").values_list("pk", flat=True))
            if not ids:
                self.emit({"action": "retried", "requested": [], "retried": 0}, "no dead jobs")
                raise CommandError("no dead jobs" + (f" in queue {queue}" if queue else ""), returncode=EXIT_NOTHING)
            before = dict.fromkeys(ids, JobState.DEAD)
            done = sum(services.jobs_retry_now(ids[i:i + RETRY_BATCH]) for i in range(0, len(ids), RETRY_BATCH))
            self._report("retried", ids, done, before, RETRYABLE_STATES)
            return
        before = self._states(job_ids)
        self._report("retried", job_ids, services.jobs_retry_now(job_ids), before, RETRYABLE_STATES)

    def do_cancel(self, *, job_ids, by, **_):
        before = self._states(job_ids)
        done = services.jobs_cancel(job_ids, by=by or f"cli:{_os_user()}")
        running = sorted(i for i, s in before.items() if s == JobState.ACTIVE)
        self._report("cancelled", job_ids, done, before, CANCELLABLE_STATES,
                     extra={"asked_to_stop": running} if running else None)

    def do_run_now(self, *, job_ids, schedule, by, **_):
        from django_q.models import Schedule

        from jobs.errors import PermanentError

        by = by or f"cli:{_os_user()}"
        if (schedule is None) == (not job_ids):
            raise CommandError("give job ids or --schedule ID (not both)", returncode=EXIT_USAGE)
        if schedule is not None:
            try:
                job_id = services.schedule_run_now(schedule, by=by)
            except Schedule.DoesNotExist:
                if self.as_json:
                    self.emit({"action": "run_now", "schedule": schedule, "job": None}, "")
                raise CommandError(f"schedule {schedule} not found", returncode=EXIT_NOTHING) from None
            except PermanentError as exc:
                raise CommandError(str(exc), returncode=EXIT_NOTHING) from None
            self.emit({"action": "run_now", "schedule": schedule, "job": job_id},
                      f"schedule {schedule}: one extra slot now as job {job_id}; its next run is unchanged")
            return
        before = self._states(job_ids)
        self._report("run_now", job_ids, services.jobs_run_now(job_ids, by=by), before, RUN_NOW_STATES)

    def do_delete(self, *, job_ids, **_):
        before = self._states(job_ids)
        deletable = tuple(s for s in JobState.values if s != JobState.ACTIVE)
        self._report("deleted", job_ids, services.jobs_delete(job_ids), before, deletable)

    def do_pause(self, *, queue, by, **_):
        by = by or f"cli:{_os_user()}"
        changed = services.queue_pause(queue, by=by)
        self.emit({"queue": queue, "paused": True, "changed": changed},
                  f"queue {queue} paused: its jobs wait until `jobs resume {queue}`" if changed
                  else f"queue {queue} was already paused")

    def do_resume(self, *, queue, **_):
        changed = services.queue_resume(queue)
        self.emit({"queue": queue, "paused": False, "changed": changed},
                  f"queue {queue} resumed" if changed else f"queue {queue} was not paused")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "?"
