"""Helpers for the Operations tests (tests/test_ops*.py): ledger rows with chosen timings,
running `manage.py jobs` the way a shell does (argv in, exit code out), and a second
database session (another process's transaction holding a lock)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from jobs.models import Job, JobState


def make_job(*, state: str = JobState.COMPLETED, queue: str = "default", job_type: str = "system:noop",
             ago: float = 60.0, lateness: float = 0.5, duration: float = 1.0, **fields) -> Job:
    """A ledger row as the engine leaves it. For finished jobs `ago` is when it finished;
    run_at, started_at and finished_at are spaced by `lateness` and `duration` seconds."""
    now = timezone.now()
    finished = now - timedelta(seconds=ago)
    started = finished - timedelta(seconds=duration)
    run_at = started - timedelta(seconds=lateness)
    values = dict(job_type=job_type, queue=queue, state=state, timeout=60, payload={}, attempts=1, run_at=run_at)
    if state in (JobState.COMPLETED, JobState.DEAD):
        values.update(started_at=started, finished_at=finished)
    elif state == JobState.ACTIVE:
        values.update(started_at=now - timedelta(seconds=duration), run_at=now - timedelta(seconds=duration + lateness),
                      lease_expires_at=now + timedelta(seconds=20), worker="host:1")
    elif state == JobState.PENDING:
        values.update(run_at=now - timedelta(seconds=ago), dispatched_at=now - timedelta(seconds=ago), attempts=0)
    elif state in (JobState.SCHEDULED, JobState.RETRY):
        values.update(run_at=now + timedelta(seconds=ago), attempts=0 if state == JobState.SCHEDULED else 1)
    if state == JobState.DEAD:
        values.update(last_error="RuntimeError: boom\n\nTraceback (most recent call last):\n  ...",
                      errors=[{"attempt": 1, "at": finished.isoformat(), "worker": "host:1",
                               "error": "RuntimeError: boom", "traceback": "Traceback (most recent call last):\n  ..."}])
    values.update(fields)
    return Job.objects.create(**values)


def run_jobs_command(*args: str) -> int:
    """Run `manage.py jobs ARGS` in this process as the command line would (argparse errors
    and CommandError become exit codes); returns the exit code. Output goes to the real
    sys.stdout/sys.stderr, so read it with capsys."""
    from django.db import connections

    from jobs.management.commands.jobs import Command

    # run_from_argv closes every connection when it ends, which would end the test's
    # transaction: the command's own behaviour is unchanged.
    connections.close_all = lambda: None
    try:
        Command().run_from_argv(["manage.py", "jobs", *args])
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        del connections.close_all


def other_mysql_session():
    """A MySQL session of its own on the test database, outside Django's connections: what
    another process (a long transaction, an ALTER) would hold locks with."""
    import MySQLdb
    from django.db import connection

    db = connection.settings_dict
    return MySQLdb.connect(host="127.0.0.1" if db["HOST"] in ("", "localhost") else db["HOST"],
                           port=int(db["PORT"] or 3306), user=db["USER"], passwd=db["PASSWORD"], db=db["NAME"])
