"""Job controls on real qclusters (real MariaDB, Redis and django-q2 workers): cancel a
running job (cooperative and not), run now (a job, a periodic task), deadlines, per-type
retry curves and Retry-After; plus the API's validation and the CLI, without workers."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from jobs import dispatcher, scheduler, services
from jobs.models import Job, JobState
from jobs.system import SYSTEM_NOOP, SYSTEM_NOOP_CURVE, SYSTEM_PERIODIC
from nextevent.redis import get_redis
from tests.conftest import slack, wait_for
from tests.ops_support import make_job, run_jobs_command

pytestmark = [pytest.mark.django_db(transaction=True)]


def runs(marker):
    return [r.decode() for r in get_redis().lrange(f"nextevent:noop:{marker}", 0, -1)]


def state_of(job_id):
    return Job.objects.get(pk=job_id).state


def wait_state(job_id, states, timeout=30):
    states = (states,) if isinstance(states, str) else states
    return wait_for(lambda: Job.objects.filter(pk=job_id, state__in=states).first(), timeout, 0.05,
                    f"job {job_id} to be {'/'.join(states)}")


# ---------------------------------------------------------------- cancel a running job


@pytest.mark.cluster
def test_a_cooperative_running_job_stops_within_about_a_second_and_ends_cancelled_not_retried(start_cluster):
    cluster = start_cluster(queues=["default"])
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 60, "cooperative": True, "marker": "coop"},
                               unique_key="controls:coop")
    wait_state(job_id, JobState.ACTIVE)
    workers = set(cluster.worker_pids())

    asked = time.monotonic()
    assert services.jobs_cancel([job_id], by="test:editor") == 1
    job = wait_state(job_id, JobState.CANCELLED, timeout=10)
    took = time.monotonic() - asked
    print(f"cooperative cancel: ended cancelled {took:.2f} s after the request")
    assert took < slack(1.5)
    assert job.cancelled_by == "test:editor" and job.cancelled_at and job.cancel_requested_at
    assert job.live_key is None and job.attempts == 1 and "stopped by its handler" in job.result
    assert set(cluster.worker_pids()) == workers  # it stopped by itself: no worker was ended
    # Never retried, and its unique key is free for a new job.
    time.sleep(2)
    assert state_of(job_id) == JobState.CANCELLED and runs("coop") == [f"{job_id}:1"]
    assert scheduler.enqueue(SYSTEM_NOOP, {}, unique_key="controls:coop") != job_id


@pytest.mark.cluster
def test_a_running_job_that_ignores_the_cancel_is_ended_with_its_worker_after_its_grace(start_cluster):
    cluster = start_cluster(queues=["default"])  # 2 workers
    stubborn = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 60, "marker": "stubborn"}, unique_key="controls:stubborn")
    wait_state(stubborn, JobState.ACTIVE)
    neighbour = scheduler.enqueue(SYSTEM_NOOP, {"sleep": 6, "marker": "neighbour"})
    wait_state(neighbour, JobState.ACTIVE)
    workers = set(cluster.worker_pids())
    holder = int(Job.objects.get(pk=stubborn).worker.rsplit(":", 1)[1])
    assert holder in workers

    asked = time.monotonic()
    assert services.jobs_cancel([stubborn], by="test:operator") == 1
    job = wait_state(stubborn, JobState.CANCELLED, timeout=20)
    took = time.monotonic() - asked
    print(f"non-cooperative cancel: ended cancelled {took:.2f} s after the request (grace 3 s)")
    assert 3 <= took < 3 + slack(1.5)  # system:noop's cancel_grace is 3 s
    assert job.cancelled_by == "test:operator" and job.live_key is None and job.attempts == 1
    # Its worker process was ended and replaced; the neighbour on the other worker finished.
    wait_for(lambda: holder not in cluster.worker_pids() and len(cluster.worker_pids()) == len(workers), 20, 0.2,
             "the cancelled job's worker to be replaced")
    assert wait_state(neighbour, JobState.COMPLETED, timeout=20).attempts == 1
    after = scheduler.enqueue(SYSTEM_NOOP, {"marker": "after"})
    wait_state(after, JobState.COMPLETED)
    # Not retried, not turned back into a retry by the reaper or a lease running out.
    time.sleep(slack(3))
    job = Job.objects.get(pk=stubborn)
    assert job.state == JobState.CANCELLED and job.attempts == 1 and runs("stubborn") == [f"{stubborn}:1"]
    assert "worker ended" in job.result


def test_a_cancelled_job_whose_worker_died_is_not_retried_by_the_lease_reaper():
    now = timezone.now()
    job = make_job(state=JobState.ACTIVE, cancel_requested_at=now, cancelled_by="test",
                   lease_expires_at=now - timedelta(seconds=1), live_key="controls:lost", unique_key="controls:lost")
    assert dispatcher.reap_expired_leases(now=now) == 1
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.CANCELLED and job.live_key is None and job.finished_at


def test_a_failing_attempt_of_a_job_asked_to_cancel_ends_cancelled_not_retry():
    job = make_job(state=JobState.ACTIVE, cancel_requested_at=timezone.now(), max_retries=3)
    assert services.job_fail(job, error="RuntimeError: boom") == JobState.CANCELLED
    assert state_of(job.pk) == JobState.CANCELLED


def test_cancel_of_waiting_jobs_is_at_once_and_records_who():
    waiting = [make_job(state=s) for s in (JobState.SCHEDULED, JobState.PENDING, JobState.RETRY)]
    done = make_job(state=JobState.COMPLETED)
    assert services.jobs_cancel([j.pk for j in waiting] + [done.pk], by="test:who") == 3
    for job in Job.objects.filter(pk__in=[j.pk for j in waiting]):
        assert job.state == JobState.CANCELLED and job.cancelled_by == "test:who" and job.cancelled_at
    assert state_of(done.pk) == JobState.COMPLETED


# ---------------------------------------------------------------- run now


@pytest.mark.cluster
def test_run_now_starts_a_scheduled_job_keeping_its_payload_and_unique_key(start_cluster):
    start_cluster(queues=["default"])
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"marker": "later"}, delay=3600, unique_key="controls:later")
    assert services.jobs_run_now([job_id], by="test:editor") == 1
    job = wait_state(job_id, JobState.COMPLETED, timeout=10)
    assert job.payload["marker"] == "later" and job.unique_key == "controls:later" and job.run_now_by == "test:editor"
    assert (job.started_at - job.run_now_at).total_seconds() < slack(1)
    assert runs("later") == [f"{job_id}:1"]


@pytest.mark.cluster
def test_run_now_of_a_periodic_task_runs_one_extra_slot_and_the_next_is_on_time_with_two_qclusters(start_cluster):
    clusters = [start_cluster(queues=["default"]) for _ in range(2)]
    assert all(c.proc.poll() is None for c in clusters)
    # Every 20 s; the next slot at least 8 s away so that the extra run happens well before it.
    now = timezone.now()
    nxt = (now + timedelta(seconds=8)).replace(microsecond=0)
    nxt += timedelta(seconds=(20 - nxt.second % 20) % 20)
    schedule = Schedule.objects.create(name="controls-run-now", func="jobs.system.periodic_noop",
                                       schedule_type=Schedule.CRON, cron="*/20 * * * * *", cluster="default",
                                       repeats=-1)
    Schedule.objects.filter(pk=schedule.pk).update(next_run=nxt)  # save() computes its own

    extra = services.schedule_run_now(schedule.pk, by="test:operator")
    job = wait_state(extra, JobState.COMPLETED, timeout=10)
    assert job.job_type == SYSTEM_PERIODIC and job.run_now_by == "test:operator"
    assert Schedule.objects.get(pk=schedule.pk).next_run == nxt  # next_run did not move

    def slot_jobs():
        return list(Job.objects.filter(job_type=SYSTEM_PERIODIC, payload__schedule_id=schedule.pk))

    wait_for(lambda: len(slot_jobs()) == 2 and all(j.state == JobState.COMPLETED for j in slot_jobs()),
             40, 0.2, "the regular slot to run too")
    Schedule.objects.filter(pk=schedule.pk).update(repeats=0)
    regular = next(j for j in slot_jobs() if j.pk != extra)
    assert datetime.fromisoformat(regular.payload["slot"]) == nxt
    late = (regular.started_at - nxt).total_seconds()
    print(f"periodic run-now: extra slot job {extra}; the regular slot started {late:.3f} s after {nxt}")
    assert 0 <= late < slack(1.5)
    assert len(slot_jobs()) == 2  # one extra, one regular: each once with two dispatchers


def test_run_now_refuses_jobs_that_are_not_waiting_for_their_time():
    jobs = [make_job(state=s) for s in (JobState.PENDING, JobState.ACTIVE, JobState.DEAD, JobState.COMPLETED)]
    assert services.jobs_run_now([j.pk for j in jobs]) == 0
    assert [state_of(j.pk) for j in jobs] == [JobState.PENDING, JobState.ACTIVE, JobState.DEAD, JobState.COMPLETED]


# ---------------------------------------------------------------- deadlines


@pytest.mark.cluster
def test_a_job_not_started_by_its_deadline_expires_unrun_after_its_cluster_was_stopped(start_cluster):
    cluster = start_cluster(queues=["default"])
    cluster.stop()
    job_id = scheduler.enqueue(SYSTEM_NOOP, {"marker": "late-push"}, expires_in=timedelta(seconds=2))
    keep = scheduler.enqueue(SYSTEM_NOOP, {"marker": "keep"})
    assert Job.objects.get(pk=job_id).expires_at is not None
    time.sleep(3)  # the outage outlasts the deadline

    start_cluster(queues=["default"])
    job = wait_state(job_id, JobState.EXPIRED, timeout=20)
    wait_state(keep, JobState.COMPLETED)
    assert runs("late-push") == [] and job.live_key is None and job.started_at is None
    assert runs("keep") == [f"{keep}:1"]


def test_a_job_claimed_after_its_deadline_is_expired_unrun():
    from jobs.worker import run_job

    job = make_job(state=JobState.PENDING, payload={"marker": "claimed-late"}, ago=10,
                   expires_at=timezone.now() - timedelta(seconds=1))
    assert run_job(job.pk) == "expired"
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.EXPIRED and job.attempts == 0 and runs("claimed-late") == []


def test_the_deadline_sweep_expires_waiting_jobs_only():
    past = timezone.now() - timedelta(seconds=1)
    waiting = [make_job(state=s, expires_at=past) for s in (JobState.SCHEDULED, JobState.PENDING, JobState.RETRY)]
    running = make_job(state=JobState.ACTIVE, expires_at=past)
    future = make_job(state=JobState.SCHEDULED, expires_at=timezone.now() + timedelta(hours=1))
    assert dispatcher.expire_overdue() == 3
    assert {state_of(j.pk) for j in waiting} == {JobState.EXPIRED}
    assert state_of(running.pk) == JobState.ACTIVE and state_of(future.pk) == JobState.SCHEDULED


@pytest.mark.parametrize("kwargs, message", [
    ({"priority": 101}, "priority: must be a whole number from -100 to 100"),
    ({"priority": "high"}, "priority: must be a whole number"),
    ({"expires_in": -5}, "expires_in: must be more than 0"),
    ({"expires_in": "soon"}, "expires_in: must be seconds or a timedelta"),
    ({"expires_in": 5, "expires_at": timezone.now()}, "expires_at and expires_in: give one, not both"),
    ({"expires_at": datetime(2030, 1, 1)}, "expires_at: must be a timezone-aware datetime"),
    ({"delay": 60, "expires_in": 0.0}, "expires_in: must be more than 0"),
])
def test_bad_controls_at_enqueue_are_refused_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        scheduler.enqueue(SYSTEM_NOOP, {}, **kwargs)
    assert not Job.objects.exists()


def test_a_deadline_before_run_at_is_refused():
    with pytest.raises(ValueError, match="is not after run_at"):
        scheduler.enqueue(SYSTEM_NOOP, {}, delay=60, expires_at=timezone.now() + timedelta(seconds=30))


def test_priority_and_deadline_are_recorded():
    job_id = scheduler.enqueue(SYSTEM_NOOP, {}, priority=90, expires_in=30)
    job = Job.objects.get(pk=job_id)
    assert job.priority == 90 and 29 < (job.expires_at - job.run_at).total_seconds() <= 30
    ids = scheduler.enqueue_many(SYSTEM_NOOP, [{}, {}], priority=-10)
    assert set(Job.objects.filter(pk__in=ids).values_list("priority", flat=True)) == {-10}


# ---------------------------------------------------------------- retry policy per type


@pytest.mark.cluster
def test_a_per_type_retry_curve_and_a_vendor_retry_after_are_honoured(start_cluster):
    start_cluster(queues=["default"])
    curve = scheduler.enqueue(SYSTEM_NOOP_CURVE, {"fail_times": 3})  # 0.5, 1.5, 4.5 s
    vendor = scheduler.enqueue(SYSTEM_NOOP, {"fail_times": 1, "retry_after": 4})
    for job_id, expected in ((curve, [0.5, 1.5, 4.5]), (vendor, [4.0])):
        job = wait_state(job_id, JobState.COMPLETED, timeout=40)
        failed = [datetime.fromisoformat(e["at"]) for e in job.errors]
        gaps = [(b - a).total_seconds() for a, b in zip(failed, failed[1:] + [job.started_at])]
        print(f"{job.job_type}: retry gaps {[round(g, 2) for g in gaps]}, expected {expected}")
        assert len(gaps) == len(expected)
        for gap, want in zip(gaps, expected):
            assert want <= gap < want + slack(1.0), (gaps, expected)


def test_a_broken_retry_delay_hook_falls_back_to_the_curve():
    from jobs.services.running import retry_delay

    job = make_job(state=JobState.ACTIVE, attempts=2)

    class Weird(Exception):
        retry_after = -3

    assert retry_delay(job, Weird()) == 2.0  # the engine's curve for attempt 2
    assert retry_delay(job, RuntimeError()) == 2.0


# ---------------------------------------------------------------- manage.py jobs


def test_the_cli_cancels_running_and_waiting_jobs_and_says_so_in_json(capsys):
    running, waiting = make_job(state=JobState.ACTIVE), make_job(state=JobState.SCHEDULED)
    assert run_jobs_command("cancel", str(running.pk), str(waiting.pk), "--by", "ops:ann", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cancelled"] == 2 and out["asked_to_stop"] == [running.pk]
    assert Job.objects.get(pk=running.pk).cancelled_by == "ops:ann"
    assert state_of(waiting.pk) == JobState.CANCELLED
    assert run_jobs_command("cancel", str(waiting.pk), "--json") == 1  # finished now


def test_the_cli_runs_jobs_and_periodic_tasks_now(capsys):
    job = make_job(state=JobState.SCHEDULED, ago=3600)
    assert run_jobs_command("run-now", str(job.pk), "--json") == 0
    assert json.loads(capsys.readouterr().out)["run_now"] == 1
    job = Job.objects.get(pk=job.pk)
    assert job.state == JobState.PENDING and job.run_now_by.startswith("cli:")

    schedule = Schedule.objects.create(name="cli-now", func="jobs.system.periodic_noop", schedule_type=Schedule.CRON,
                                       cron="0 3 * * *", repeats=-1, next_run=timezone.now() + timedelta(hours=3))
    assert run_jobs_command("run-now", "--schedule", str(schedule.pk), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert Job.objects.get(pk=out["job"]).job_type == SYSTEM_PERIODIC
    assert Schedule.objects.get(pk=schedule.pk).next_run == schedule.next_run
    assert run_jobs_command("run-now", "--schedule", "999999") == 1
    assert run_jobs_command("run-now") == 2


# ---------------------------------------------------------------- expired jobs are seen


def expired_job(queue="news", job_type="news:expiration"):
    return make_job(state=JobState.EXPIRED, queue=queue, job_type=job_type, attempts=0, started_at=None,
                    finished_at=timezone.now() - timedelta(seconds=120))  # it never ran


def test_expired_jobs_show_in_the_counts_the_dashboard_the_cli_and_metrics(client, settings, capsys):
    from django.contrib.auth.models import Permission, User
    from prometheus_client.parser import text_string_to_metric_families

    from jobs import monitoring

    settings.METRICS_CACHE_SECONDS, settings.METRICS_TOKEN, settings.METRICS_PUBLIC = 0, "", True
    expired_job()
    expired_job()
    make_job(state=JobState.COMPLETED, queue="news", job_type="news:expiration", ago=120)

    counts = monitoring.finished_counts(timezone.now())["news"]
    assert counts["expired_1h"] == 2 and counts["completed_1h"] == 1

    fams = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}
    samples = {(s.labels["queue"], s.labels["job_type"]): s.value for s in fams["nextevent_jobs_expired_last_hour"].samples}
    assert samples[("news", "news:expiration")] == 2

    user = User.objects.create_user("dash", is_staff=True)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="jobs", codename="view_job"))
    client.force_login(user)
    page = client.get("/admin/jobs/dashboard/").content.decode()
    assert 'data-col="expired_today">2<' in page

    assert run_jobs_command("stats", "--json") in (0, 3)  # 3: no cluster alive is not an error here
    assert json.loads(capsys.readouterr().out)["queues"]["news"]["expired_today"] == 2


# ---------------------------------------------------------------- priority within a queue


def test_a_wake_up_claims_the_best_pending_job_of_its_own_queue_only():
    low = scheduler.enqueue_many(SYSTEM_NOOP, [{}] * 3)
    other_queue = scheduler.enqueue(SYSTEM_PERIODIC, {"schedule_id": 1, "name": "x", "func": "f",
                                                      "slot": timezone.now().isoformat()}, priority=100)
    high, higher = scheduler.enqueue(SYSTEM_NOOP, {}, priority=10), scheduler.enqueue(SYSTEM_NOOP, {}, priority=50)
    order = [services.job_claim(low[0], worker=f"w:{n}").pk for n in range(5)]
    assert order == [higher, high, low[0], low[1], low[2]]  # priority, then run_at and id
    assert state_of(other_queue) == JobState.PENDING  # the critical queue's job stays for its own workers
    assert services.job_claim(low[0], worker="w:9") is None  # nothing pending left in default


@pytest.mark.cluster
def test_a_high_priority_job_enqueued_behind_10000_due_ones_starts_next(start_cluster):
    cluster = start_cluster(queues=["default"])
    low = scheduler.enqueue_many(SYSTEM_NOOP, [{}] * 10_000)  # due now, wake-ups pushed in FIFO order
    wait_for(lambda: Job.objects.filter(pk__in=low[:50], state=JobState.COMPLETED).exists(), 20, 0.05,
             "the low-priority backlog to start draining")
    enqueued = timezone.now()
    high = scheduler.enqueue(SYSTEM_NOOP, {"marker": "urgent"}, priority=100)
    job = wait_state(high, JobState.COMPLETED, timeout=20)
    started_before = Job.objects.filter(pk__in=low, started_at__lt=job.started_at).count()
    after_enqueue = Job.objects.filter(pk__in=low, started_at__gte=enqueued, started_at__lt=job.started_at).count()
    waited = (job.started_at - enqueued).total_seconds()
    print(f"priority: started {waited * 1000:.0f} ms after enqueue; {after_enqueue} low-priority job(s) started "
          f"in between ({started_before} before it in all), {10_000 - started_before} still behind it")
    assert waited < slack(1.0)
    assert after_enqueue <= 10  # those already claimed by the 2 workers as it arrived, not the backlog
    services.jobs_cancel(low, by="test")  # the rest need not run
    cluster.stop()


# ---------------------------------------------------------------- rate and concurrency limits


def windows_exceeded(starts: list[float], count: int, per: float) -> list:
    """Starts (epoch seconds, sorted) from which the next `per` seconds hold more than `count`."""
    starts = sorted(starts)
    return [s for i, s in enumerate(starts) if len([t for t in starts[i:] if t < s + per - 0.02]) > count]


def most_running(intervals: list[tuple[float, float]]) -> int:
    # A start within 50 ms of another's recorded finish is a hand-over, not an overlap: the
    # slot is released when the handler returns, the completion is written up to 10 ms later.
    events = sorted([(a, 1) for a, _ in intervals] + [(b - 0.05, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    running = top = 0
    for _, step in events:
        running += step
        top = max(top, running)
    return top


@pytest.mark.cluster
def test_a_rate_of_5_per_10_s_and_a_concurrency_of_2_hold_across_two_qclusters_under_200_jobs(start_cluster):
    from jobs.system import SYSTEM_NOOP_LIMITED

    for _ in range(2):
        start_cluster(queues=["default"])
    keys = [f"acct{n}" for n in range(20)]
    started = time.monotonic()
    ids = scheduler.enqueue_many(SYSTEM_NOOP_LIMITED, [{"marker": k, "sleep": 0.3} for k in keys for _ in range(10)])
    wait_for(lambda: Job.objects.filter(pk__in=ids, state=JobState.COMPLETED).count() == 200, 90, 0.5,
             "all 200 limited jobs to complete")
    took = time.monotonic() - started
    jobs = list(Job.objects.filter(pk__in=ids))
    assert all(j.attempts == 1 and not j.errors for j in jobs)  # waiting spent no attempt
    worst_rate = worst_running = 0
    for key in keys:
        mine = [j for j in jobs if j.payload["marker"] == key]
        starts = [j.started_at.timestamp() for j in mine]
        assert windows_exceeded(starts, 5, 10) == [], (key, sorted(starts))
        worst_rate = max(worst_rate, max(len([t for t in starts if s <= t < s + 10]) for s in starts))
        worst_running = max(worst_running, most_running([(j.started_at.timestamp(), j.finished_at.timestamp())
                                                         for j in mine]))
    assert worst_running <= 2
    spread = max(j.started_at for j in jobs) - min(j.started_at for j in jobs)
    print(f"limits: 200 jobs over 20 keys done in {took:.1f} s (starts spread {spread.total_seconds():.1f} s); "
          f"most starts in any 10 s window of one key {worst_rate} (limit 5), most running at once {worst_running} "
          f"(limit 2)")
    assert spread.total_seconds() >= 10  # 10 per key at 5 per 10 s: a second window was needed


def test_a_job_over_its_limit_waits_with_its_reason_without_spending_an_attempt():
    from jobs.system import SYSTEM_NOOP_LIMITED
    from jobs.worker import run_job

    ids = scheduler.enqueue_many(SYSTEM_NOOP_LIMITED, [{"marker": "solo"}] * 6)
    results = [run_job(i) for i in ids]
    assert results == ["completed"] * 5 + ["limited"]
    waiting = Job.objects.get(pk=ids[5])
    assert waiting.state == JobState.SCHEDULED and waiting.attempts == 0
    assert "rate limit: 5 per 10 s for {marker}=solo" in waiting.waiting_reason
    assert 0 < (waiting.run_at - timezone.now()).total_seconds() <= 12


def test_a_bad_limit_declaration_stops_start_up_naming_it():
    from jobs.payloads import Payload
    from jobs.registry import RegistryError, job_type

    for kwargs, message in (({"rate": 5}, "rate must be \\(count, per\\)"), ({"rate": (0, "minute")}, "rate count"),
                            ({"rate": (5, "fortnight")}, "rate per must be"), ({"concurrency": 0}, "concurrency must"),
                            ({"rate_key": "{x}"}, "rate_key / concurrency_key without")):
        with pytest.raises(RegistryError, match="job type 'test:limits': " + message):
            job_type("test:limits", queue="default", timeout=10, payload=Payload, **kwargs)(lambda p, j: None)


def test_a_type_s_default_deadline_and_priority_apply_and_enqueue_overrides_them():
    from jobs.registry import job_type
    from jobs.system import NoopPayload

    job_type("test:deadline", queue="default", timeout=10, payload=NoopPayload, expires_in=30, priority=7)(
        lambda p, j: None)
    job = Job.objects.get(pk=scheduler.enqueue("test:deadline", {}, delay=60))
    assert (job.expires_at - job.run_at).total_seconds() == 30 and job.priority == 7
    job = Job.objects.get(pk=scheduler.enqueue("test:deadline", {}, expires_in=timedelta(hours=2), priority=-1))
    assert (job.expires_at - job.run_at).total_seconds() == 7200 and job.priority == -1


def test_the_tasks_api_priority_is_the_job_s_priority():
    from tests import declared_tasks as dt

    result = dt.build_report.using(priority=40).enqueue(8)
    assert Job.objects.get(pk=int(result.id)).priority == 40
