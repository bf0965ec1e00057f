"""`manage.py jobs`: what each subcommand prints for people and for scripts (--json), and
the exit codes scripts rely on (0 ok, 1 nothing matched / not found, 2 usage, 3 unavailable)."""

import json
import os
import subprocess
import sys

import pytest
from django.db import connection

from jobs.models import Job, JobState, QueuePause
from tests.conftest import ROOT
from tests.ops_support import make_job, run_jobs_command

pytestmark = pytest.mark.django_db


def run(capsys, *args):
    code = run_jobs_command(*args)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args):
    code, out, err = run(capsys, *args, "--json")
    return code, json.loads(out), err


# ---------------------------------------------------------------- stats


def test_stats_shows_every_queue_with_counts_throughput_and_oldest_pending(capsys):
    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", ago=120)
    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", ago=30)
    for _ in range(3):
        make_job(state=JobState.COMPLETED, queue="default", ago=60)
    make_job(state=JobState.COMPLETED, queue="default", ago=3 * 3600)  # not in the last hour
    make_job(state=JobState.PENDING, queue="default", ago=95)
    make_job(state=JobState.SCHEDULED, queue="wechat", job_type="wechat:draft_creation")

    code, data, _ = run_json(capsys, "stats")
    assert code == 0
    assert set(data["queues"]) == {"critical", "news", "wechat", "analytics", "default"}
    news, default = data["queues"]["news"], data["queues"]["default"]
    assert news["dead"] == 2 and news["failed_1h"] == 2
    assert default["completed_1h"] == 3 and default["pending"] == 1
    assert 94 <= default["oldest_pending_age_s"] < 120
    assert data["queues"]["wechat"]["scheduled"] == 1
    assert data["redis_error"] is None and data["health"] is None

    code, out, _ = run(capsys, "stats")
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["QUEUE"][:7] == ["QUEUE", "SCHED", "PEND", "ACTIVE", "RETRY", "DEAD", "DEPTH"]
    assert lines["news"][1:6] == ["0", "0", "0", "0", "2"]
    assert 95 <= float(lines["default"][7]) < 120 and lines["default"][8] == "s"  # oldest pending job
    assert "clusters: none alive" in out and "health check: never ran" in out


def test_stats_marks_a_paused_queue(capsys):
    QueuePause.objects.create(queue="wechat", paused_by="test")
    code, out, _ = run(capsys, "stats")
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("wechat")][0].split()[1] == "paused"


# ---------------------------------------------------------------- list


def test_list_filters_by_queue_state_type_and_subject_newest_first(capsys):
    old = make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", subject="news:7")
    new = make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", subject="news:7")
    make_job(state=JobState.DEAD, queue="news", job_type="news:scheduled_publisher", subject="news:7")
    make_job(state=JobState.COMPLETED, queue="news", job_type="news:expiration", subject="news:7")
    make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", subject="news:8")

    code, rows, _ = run_json(capsys, "list", "--queue", "news", "--state", "dead", "--type", "news:expiration",
                             "--subject", "news:7")
    assert code == 0
    assert [r["id"] for r in rows] == [new.pk, old.pk]
    assert rows[0]["last_error"] == "RuntimeError: boom" and rows[0]["subject"] == "news:7"

    code, out, _ = run(capsys, "list", "--subject", "news:7", "--limit", "2")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "TYPE", "QUEUE", "STATE"]
    assert len(lines) == 3  # header + the limit


def test_list_exits_1_when_nothing_matches(capsys):
    make_job(state=JobState.COMPLETED)
    code, out, err = run(capsys, "list", "--state", "dead")
    assert code == 1 and "no jobs match" in out and "no jobs match" in err
    code, rows, _ = run_json(capsys, "list", "--state", "dead")
    assert code == 1 and rows == []


@pytest.mark.parametrize("args", [
    ["list", "--state", "exploded"],
    ["list", "--queue", "nope"],
    ["list", "--limit", "0"],
    ["list", "--limit", "many"],
    ["frobnicate"],
    [],
    ["show"],
    ["pause", "nope"],
    ["retry"],
    ["retry", "1", "--all-dead"],
    ["retry", "1", "--queue", "news"],
    ["cancel"],
])
def test_usage_errors_exit_2(capsys, args):
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert err.strip()


# ---------------------------------------------------------------- show


def test_show_prints_payload_attempts_and_every_error_with_its_traceback(capsys):
    job = make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", subject="news:42", attempts=2,
                   payload={"news_id": 42, "expires_at": "2030-01-01T00:00:00+00:00"},
                   errors=[{"attempt": 1, "at": "2030-01-01T00:00:01+00:00", "worker": "h:1",
                            "error": "TimeoutError: first", "traceback": "Traceback A\n  line a"},
                           {"attempt": 2, "at": "2030-01-01T00:00:03+00:00", "worker": "h:2",
                            "error": "PermanentError: second", "traceback": "Traceback B\n  line b"}])
    code, out, _ = run(capsys, "show", str(job.pk))
    assert code == 0
    assert f"job {job.pk}  news:expiration  [dead]" in out
    assert '"news_id": 42' in out and "attempts    2 (max retries 3)" in out
    assert "errors (2):" in out
    for text in ("attempt 1 at 2030-01-01T00:00:01+00:00 on h:1", "TimeoutError: first", "line a",
                 "attempt 2 at 2030-01-01T00:00:03+00:00 on h:2", "PermanentError: second", "line b"):
        assert text in out

    code, data, _ = run_json(capsys, "show", str(job.pk))
    assert code == 0
    assert data["payload"]["news_id"] == 42 and len(data["errors"]) == 2
    assert data["errors"][1]["traceback"] == "Traceback B\n  line b"


def test_show_exits_1_for_a_missing_job(capsys):
    code, out, err = run(capsys, "show", "424242")
    assert code == 1 and "job 424242 not found" in err
    code, data, _ = run_json(capsys, "show", "424242")
    assert code == 1 and data is None


# ---------------------------------------------------------------- retry / cancel / delete


def test_retry_runs_dead_jobs_again_and_exits_0(capsys):
    a = make_job(state=JobState.DEAD, attempts=4)
    b = make_job(state=JobState.RETRY)
    code, out, _ = run(capsys, "retry", str(a.pk), str(b.pk))
    assert code == 0 and "retried 2 of 2 job(s)" in out
    for job in (a, b):
        job.refresh_from_db()
        assert job.state == JobState.PENDING and job.attempts == 0 and job.finished_at is None


def test_retry_names_what_it_could_not_retry_and_exits_1(capsys):
    dead = make_job(state=JobState.DEAD)
    done = make_job(state=JobState.COMPLETED)
    code, data, _ = run_json(capsys, "retry", str(dead.pk), str(done.pk), "999999")
    assert code == 1
    assert data["retried"] == 1 and data["not_found"] == [999999]
    assert data["wrong_state"] == {str(done.pk): "completed"}
    done.refresh_from_db()
    assert done.state == JobState.COMPLETED


def test_retry_all_dead_of_one_queue(capsys):
    news_dead = [make_job(state=JobState.DEAD, queue="news", job_type="news:expiration") for _ in range(3)]
    other = make_job(state=JobState.DEAD, queue="default")
    code, out, _ = run(capsys, "retry", "--all-dead", "--queue", "news")
    assert code == 0 and "retried 3 of 3 job(s)" in out
    assert set(Job.objects.filter(state=JobState.PENDING).values_list("pk", flat=True)) == {j.pk for j in news_dead}
    other.refresh_from_db()
    assert other.state == JobState.DEAD

    code, _, err = run(capsys, "retry", "--all-dead", "--queue", "news")
    assert code == 1 and "no dead jobs in queue news" in err


def test_cancel_asks_running_jobs_to_stop_and_says_so(capsys):
    scheduled = make_job(state=JobState.SCHEDULED)
    active = make_job(state=JobState.ACTIVE)
    done = make_job(state=JobState.COMPLETED)
    code, out, _ = run(capsys, "cancel", str(scheduled.pk), str(active.pk), str(done.pk))
    assert code == 1
    assert "cancelled 2 of 3 job(s)" in out and f"{done.pk} (completed)" in out
    scheduled.refresh_from_db(), active.refresh_from_db()
    assert scheduled.state == JobState.CANCELLED and scheduled.cancelled_by.startswith("cli:")
    assert active.state == JobState.ACTIVE and active.cancel_requested_at is not None  # its worker stops it

    another = make_job(state=JobState.PENDING)
    assert run(capsys, "cancel", str(another.pk))[0] == 0


def test_delete_removes_finished_jobs_but_not_running_ones(capsys):
    done = make_job(state=JobState.COMPLETED)
    dead = make_job(state=JobState.DEAD)
    active = make_job(state=JobState.ACTIVE)
    code, data, _ = run_json(capsys, "delete", str(done.pk), str(dead.pk))
    assert code == 0 and data["deleted"] == 2
    assert not Job.objects.filter(pk__in=[done.pk, dead.pk]).exists()
    code, out, _ = run(capsys, "delete", str(active.pk))
    assert code == 1 and "not deleted (state)" in out
    assert Job.objects.filter(pk=active.pk).exists()


# ---------------------------------------------------------------- pause / resume


def test_pause_and_resume_are_idempotent_and_exit_0(capsys):
    code, out, _ = run(capsys, "pause", "news", "--by", "alice")
    assert code == 0 and "queue news paused" in out
    assert QueuePause.objects.get(queue="news").paused_by == "alice"
    code, data, _ = run_json(capsys, "pause", "news")
    assert code == 0 and data == {"queue": "news", "paused": True, "changed": False}

    code, out, _ = run(capsys, "resume", "news")
    assert code == 0 and "queue news resumed" in out
    assert not QueuePause.objects.filter(queue="news").exists()
    code, data, _ = run_json(capsys, "resume", "news")
    assert code == 0 and data["changed"] is False


def test_pause_records_the_os_user_by_default(capsys):
    assert run(capsys, "pause", "analytics")[0] == 0
    assert QueuePause.objects.get(queue="analytics").paused_by.startswith("cli:")


# ---------------------------------------------------------------- the real command line


def _manage(*args, env=None):
    full_env = {**os.environ, "DB_NAME": connection.settings_dict["NAME"], **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), "jobs", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_the_shell_sees_the_documented_exit_codes():
    ok = _manage("stats", "--json")
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)["queues"]) >= {"critical", "default"}
    assert _manage("show", "424242").returncode == 1
    assert _manage("frobnicate").returncode == 2
    # Redis away (nothing listens on port 9): the ledger part is printed, the exit says partial.
    away = _manage("stats", env={"REDIS_PORT": "9"})
    assert away.returncode == 3, away.stderr
    assert "critical" in away.stdout and "Redis unavailable" in away.stderr
    # MySQL away (nothing listens on port 1).
    no_db = _manage("list", env={"DB_HOST": "127.0.0.1", "DB_PORT": "1", "DB_CONNECT_TIMEOUT": "1"})
    assert no_db.returncode == 3 and "OperationalError" in no_db.stderr
