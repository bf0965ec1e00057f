#!/usr/bin/env python3
"""The critical mutations: bugs that once left the whole suite green. Each is
written, as a text patch, into a temporary copy of the tree; the test(s) that guard it run
there and must fail; the file is restored before the next one. Exits non-zero if any
mutation survives (its tests pass), if a patch no longer applies (the code moved: update
the patch here, do not drop it), or if the tests fail without any mutation.

    DB_NAME=... REDIS_DB=... .venv/bin/python scripts/critical_mutations.py [--only NAME]

Needs MariaDB and Redis like ./scripts/test. A few minutes: two of the tests wait for a
timeout to prove a cluster is not restarted / not stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T = "tests/test_guarantees.py::"


@dataclass
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: list[str]
    also: tuple[tuple[str, str], ...] = ()  # more (old, new) replacements in the same file, for a bug with two guards


MUTATIONS = [
    Mutation(
        "lease never renewed", "jobs/services/running.py",
        "    return bool(Job.objects.filter(pk=job_id, state=JobState.ACTIVE, claims=claim).update(\n"
        "        lease_expires_at=timezone.now() + timedelta(seconds=settings.JOBS_LEASE_SECONDS)))",
        "    return True",
        [T + "test_a_healthy_job_longer_than_its_lease_keeps_it_and_runs_once"]),
    Mutation(
        "a lost worker's job is retried forever", "jobs/services/running.py",
        "    state = _record_failure(job, running, error=error,",
        "    job.max_retries = 10 ** 9\n"
        "    state = _record_failure(job, running, error=error,",
        [T + "test_a_job_that_kills_its_worker_every_time_ends_dead_after_max_retries_plus_one"]),
    Mutation(
        "no claim fencing in _running", "jobs/services/running.py",
        "    return Job.objects.filter(pk=job.pk, state=JobState.ACTIVE, claims=job.claims)",
        "    return Job.objects.filter(pk=job.pk, state=JobState.ACTIVE)",
        [T + "test_a_stale_worker_cannot_fail_a_job_another_worker_now_runs"]),
    Mutation(
        "no claim fencing in a completion", "jobs/services/running.py",
        '"waiting_reason=\'\', result=%s WHERE id=%s AND state=%s AND claims=%s").format(',
        '"waiting_reason=\'\', result=%s WHERE id=%s AND state=%s AND %s IS NOT NULL").format(',
        [T + "test_a_stale_worker_cannot_complete_a_job_another_worker_now_runs",
         "tests/test_completions_deferred.py::test_a_stale_attempt_is_not_recorded_and_the_claim_still_happens"]),
    Mutation(
        "the supervisor never restarts a dead cluster", "jobs/supervisor.py",
        "        if now >= child.next_start:\n            self._start(child)",
        "        if False:\n            self._start(child)",
        [T + "test_a_cluster_that_dies_alone_is_restarted_and_runs_jobs"]),
    Mutation(
        "a cluster whose supervisor died keeps running", "jobs/management/commands/jobs_cluster.py",
        # Both guards: the kernel's parent-death signal and the cluster's own parent watch.
        "            proctree.die_with_parent(signal.SIGKILL, supervisor)",
        "            pass",
        [T + "test_a_supervisor_killed_outright_takes_its_clusters_with_it"],
        also=(("if os.getppid() != parent and stopping_since is None:", "if False:"),)),
    Mutation(
        "news_publish_scheduled publishes before scheduled_at", "news/services.py",
        '"status": NewsStatus.SCHEDULED, "scheduled_at__lte": now}',
        '"status": NewsStatus.SCHEDULED}',
        [T + "test_a_publishing_job_run_before_scheduled_at_publishes_nothing"]),
    # Beyond the seven: rules whose loss no other single test would name.
    Mutation(
        "a claim does not check the job is pending", "jobs/services/running.py",
        '"WHERE id=%s AND state=%s")\n'
        '    claim_params = [JobState.ACTIVE.value, _dt(now), _dt(lease), worker, job_id, JobState.PENDING.value]',
        '"WHERE id=%s AND state<>%s")\n'
        '    claim_params = [JobState.ACTIVE.value, _dt(now), _dt(lease), worker, job_id, JobState.COMPLETED.value]',
        [T + "test_only_a_pending_job_can_be_claimed_and_only_once"],
        # MariaDB's claim targets the priority pick: the same bug in its WHERE.
        also=(('claim_sql.replace("WHERE id=%s AND state=%s", "WHERE id=@jobs_claim_target AND state=%s")',
               'claim_sql.replace("WHERE id=%s AND state<>%s", "WHERE id=@jobs_claim_target AND state<>%s")'),)),
    Mutation(
        "no backoff between retries", "jobs/services/running.py",
        "    retry_in = 0.0 if permanent else retry_delay(job, error_object)",
        "    retry_in = 0.0",
        ["tests/test_engine_workers.py::test_a_failing_job_is_retried_after_1_2_4_seconds_then_completes"]),
]


# Not in CI (--extra runs them): the breakages each of the other new or strengthened guarantee
# tests was seen failing on.
EXTRA = [
    Mutation(
        "REDIS_PASSWORD not passed to the connections", "nextevent/config.py",
        '        config["password"] = password', "        pass",
        ["tests/test_settings.py::test_the_redis_password_reaches_django_q2_broker"]),
    Mutation(
        "the plain log format loses the level", "nextevent/settings.py",
        '"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}',
        '"plain": {"format": "%(asctime)s %(name)s %(message)s"}',
        ["tests/test_ops_logs.py::test_the_plain_format_reads_as_key_value_text"]),
    Mutation(
        "a running job is moved instead of handing its key over", "jobs/services/creating.py",
        "        # Running now: it will find its payload stale. Release the key to its successor.\n"
        "        Job.objects.filter(pk=live.pk).update(live_key=None)",
        "        # Running now: it will find its payload stale. Release the key to its successor.\n"
        "        Job.objects.filter(pk=live.pk).update(live_key=None, state=JobState.SCHEDULED)",
        ["tests/test_engine_api.py::test_a_running_job_gives_its_key_to_a_rescheduled_successor"]),
    Mutation(
        "the readiness probe waits forever on a silent Redis", "jobs/probes.py",
        '"socket_timeout": timeout,', '"socket_timeout": None,',
        ["tests/test_outages.py::test_readiness_fails_fast_naming_the_component_that_is_down[silent-redis]"]),
    Mutation(
        "the dispatcher logs every failed pass of an outage", "jobs/dispatcher.py",
        "if self.errors_in_a_row <= 3 or self.errors_in_a_row % 60 == 0:", "if True:",
        ["tests/test_outages.py::test_the_engine_rides_out_an_outage_and_runs_what_came_due_meanwhile[refused-mysql]"]),
    Mutation(
        "a worker runs a paused queue's job", "jobs/worker.py",
        "    if services.is_queue_paused(job.queue):", "    if False:",
        ["tests/test_ops_pause_cluster.py"]),
    Mutation(
        "the dispatcher forwards a paused queue's jobs", "jobs/dispatcher.py",
        "                    .exclude(queue__in=paused).order_by(\"run_at\"))", "                    .order_by(\"run_at\"))",
        ["tests/test_ops_pause_cluster.py"]),
    Mutation(
        "the health check pings Redis with the shared client (no read timeout)", "jobs/health.py",
        '("redis", lambda: check_redis(timeout=5.0))',
        '("redis", lambda: __import__("nextevent.redis").redis.get_redis().ping())',
        ["tests/test_outages.py::test_the_health_check_reports_a_redis_outage_and_returns[silent]"]),
]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line and not line.startswith(".venv")]


def copy_tree(dest: Path) -> None:
    for rel in tracked_files():
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def pytest(tree: Path, tests: list[str], timeout: float) -> tuple[int, str]:
    python = os.environ.get("PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    except subprocess.TimeoutExpired as exc:
        return 124, f"timed out after {timeout} s\n{exc.stdout or ''}"
    return proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only the mutation(s) whose name contains this")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per pytest run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--extra", action="store_true", help="also the breakages of the other new tests")
    args = parser.parse_args()
    pool = MUTATIONS + (EXTRA if args.extra else [])
    chosen = [m for m in pool if not args.only or any(o in m.name for o in args.only)]
    if not chosen:
        print("no mutation matches", args.only, file=sys.stderr)
        return 2
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="critical-mutations-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            t0 = time.monotonic()
            rc, out = pytest(tree, tests, args.timeout * 2)
            print(f"baseline (no mutation): rc={rc} in {time.monotonic() - t0:.0f} s", flush=True)
            if rc != 0:
                print(out[-4000:])
                print("critical mutations: the guarding tests fail without any mutation", file=sys.stderr)
                return 1
        for m in chosen:
            target = tree / m.path
            original = target.read_text()
            pairs = [(m.old, m.new), *m.also]
            missing = [(old, original.count(old)) for old, _ in pairs if original.count(old) != 1]
            if missing:
                problems.append(f"{m.name}: patch does not apply to {m.path} (found {missing[0][1]} times)")
                print(f"NOT APPLIED  {m.name}", flush=True)
                continue
            mutated = original
            for old, new in pairs:
                mutated = mutated.replace(old, new)
            target.write_text(mutated)
            t0 = time.monotonic()
            try:
                rc, out = pytest(tree, m.tests, args.timeout)
            finally:
                target.write_text(original)
            took = time.monotonic() - t0
            if rc == 1:  # tests ran and failed: the mutation is killed
                failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
                print(f"killed       {m.name} ({took:.0f} s): {failed[0] if failed else 'failed'}", flush=True)
            elif rc == 0:
                problems.append(f"{m.name}: SURVIVED, {' '.join(m.tests)} passed with the bug in {m.path}")
                print(f"SURVIVED     {m.name} ({took:.0f} s)", flush=True)
            else:  # collection error, timeout, no tests: not evidence of a kill
                problems.append(f"{m.name}: pytest exited {rc}, not a clean failure:\n{out[-2000:]}")
                print(f"UNCLEAR      {m.name} (rc={rc}, {took:.0f} s)", flush=True)
    killed = len(chosen) - len(problems)
    print(f"critical mutations: {killed}/{len(chosen)} killed")
    for p in problems:
        print("  " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
