"""Staff who may only look cannot act: each custom admin action and
staff view checked with a view-only staff user, through the Django test client against
the real database and Redis."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from jobs.models import Job, JobState
from nextevent.redis import get_redis
from tests.ops_support import make_job
from wechat.models import ArticleState, WechatArticle

pytestmark = pytest.mark.django_db


def staff_with(client, *perms: str) -> User:
    """A logged-in staff user holding exactly `perms` ("app_label.codename")."""
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:8]}", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client.force_login(user)
    return user


def offered_actions(response) -> set[str]:
    form = response.context["action_form"]  # None when no action is offered at all
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


def run_action(client, url: str, action: str, pks) -> None:
    client.post(url, {"action": action, "_selected_action": [str(pk) for pk in pks]})


# ---------------------------------------------------------------- WeChat articles


@pytest.fixture
def articles():
    from news.factories import NewsFactory

    failed = WechatArticle.objects.create(news=NewsFactory(push_to_wechat=True), state=ArticleState.FAILED,
                                          last_error="boom")
    unknown = WechatArticle.objects.create(news=NewsFactory(push_to_wechat=True), state=ArticleState.UNKNOWN,
                                           draft_media_id="MEDIA_U")
    return failed, unknown


WECHAT_ACTIONS = ["retry", "resolve_published", "resolve_not_published", "resolve_check_again"]


@pytest.mark.parametrize("action", WECHAT_ACTIONS)
def test_a_view_only_user_can_neither_see_nor_run_the_wechat_article_actions(client, articles, action):
    staff_with(client, "wechat.view_wechatarticle")
    url = "/admin/wechat/wechatarticle/"
    before = {a.pk: (a.state, a.updated_at) for a in WechatArticle.objects.all()}

    response = client.get(url)
    assert response.status_code == 200 and not offered_actions(response) & set(WECHAT_ACTIONS)
    run_action(client, url, action, before)

    assert {a.pk: (a.state, a.updated_at) for a in WechatArticle.objects.all()} == before
    assert not Job.objects.exists()  # no draft or publishing job was created


def test_a_user_with_change_permission_is_offered_the_wechat_actions_and_can_retry(client, articles):
    staff_with(client, "wechat.view_wechatarticle", "wechat.change_wechatarticle")
    failed, _ = articles

    assert offered_actions(client.get("/admin/wechat/wechatarticle/")) >= set(WECHAT_ACTIONS)
    run_action(client, "/admin/wechat/wechatarticle/", "retry", [failed.pk])

    assert WechatArticle.objects.get(pk=failed.pk).state == ArticleState.PENDING


# ---------------------------------------------------------------- the job ledger


@pytest.mark.parametrize("action, state", [("retry_now", JobState.DEAD), ("cancel", JobState.SCHEDULED),
                                           ("delete_jobs", JobState.DEAD)])
def test_a_view_only_user_can_neither_see_nor_run_the_job_actions(client, action, state):
    staff_with(client, "jobs.view_job")
    job = make_job(state=state)

    response = client.get("/admin/jobs/job/")
    assert response.status_code == 200 and offered_actions(response) == set()
    run_action(client, "/admin/jobs/job/", action, [job.pk])

    assert Job.objects.get(pk=job.pk).state == state


def test_the_job_actions_need_change_or_delete_as_they_do(client):
    staff_with(client, "jobs.view_job", "jobs.change_job")
    assert offered_actions(client.get("/admin/jobs/job/")) == {"retry_now"}
    client.logout()
    staff_with(client, "jobs.view_job", "jobs.delete_job")
    assert offered_actions(client.get("/admin/jobs/job/")) == {"delete_jobs"}


# ---------------------------------------------------------------- job controls (cancel, run now)


def test_cancel_and_run_now_each_need_their_own_permission(client):
    staff_with(client, "jobs.view_job", "jobs.change_job", "jobs.delete_job")  # everything but the controls
    assert offered_actions(client.get("/admin/jobs/job/")) & {"cancel", "run_now"} == set()
    client.logout()
    staff_with(client, "jobs.view_job", "jobs.cancel_job")
    assert offered_actions(client.get("/admin/jobs/job/")) == {"cancel"}
    client.logout()
    staff_with(client, "jobs.view_job", "jobs.run_job_now")
    assert offered_actions(client.get("/admin/jobs/job/")) == {"run_now"}


@pytest.mark.parametrize("action, state", [("cancel", JobState.SCHEDULED), ("cancel", JobState.ACTIVE),
                                           ("run_now", JobState.SCHEDULED), ("run_now", JobState.RETRY)])
def test_a_view_only_user_can_run_no_job_control_from_the_list_or_the_job_page(client, action, state):
    staff_with(client, "jobs.view_job", "jobs.change_job")
    job = make_job(state=state)
    before = Job.objects.filter(pk=job.pk).values().get()

    run_action(client, "/admin/jobs/job/", action, [job.pk])
    page = client.get(f"/admin/jobs/job/{job.pk}/change/")
    assert page.status_code == 200 and b"job-cancel" not in page.content and b"job-run-now" not in page.content
    url = {"cancel": "cancel", "run_now": "run-now"}[action]
    assert client.post(f"/admin/jobs/job/{job.pk}/{url}/").status_code == 403

    assert Job.objects.filter(pk=job.pk).values().get() == before


def test_those_allowed_cancel_and_run_now_from_the_list_and_the_job_page_recorded_by_name(client):
    user = staff_with(client, "jobs.view_job", "jobs.cancel_job", "jobs.run_job_now")
    scheduled, running, waiting = (make_job(state=JobState.SCHEDULED, ago=3600), make_job(state=JobState.ACTIVE),
                                   make_job(state=JobState.SCHEDULED, ago=3600))

    page = client.get(f"/admin/jobs/job/{scheduled.pk}/change/")
    assert b"job-cancel" in page.content and b"job-run-now" in page.content
    assert client.post(f"/admin/jobs/job/{scheduled.pk}/run-now/").status_code == 302
    run_action(client, "/admin/jobs/job/", "cancel", [running.pk, waiting.pk])

    moved = Job.objects.get(pk=scheduled.pk)
    assert moved.state == JobState.PENDING and moved.run_now_by == f"admin:{user.username}" and moved.run_now_at
    asked = Job.objects.get(pk=running.pk)
    assert asked.state == JobState.ACTIVE and asked.cancel_requested_at and asked.cancelled_by == f"admin:{user.username}"
    gone = Job.objects.get(pk=waiting.pk)
    assert gone.state == JobState.CANCELLED and gone.cancelled_at and gone.cancelled_by == f"admin:{user.username}"


def test_run_now_of_a_periodic_task_needs_the_run_now_permission(client):
    from django_q.models import Schedule

    schedule = Schedule.objects.create(name="try-now", func="jobs.system.periodic_noop", schedule_type=Schedule.CRON,
                                       cron="0 3 * * *", repeats=-1, next_run=timezone.now() + timezone.timedelta(hours=5))
    staff_with(client, "django_q.view_schedule", "django_q.change_schedule")
    assert "run_schedule_now" not in offered_actions(client.get("/admin/django_q/schedule/"))
    run_action(client, "/admin/django_q/schedule/", "run_schedule_now", [schedule.pk])
    assert not Job.objects.exists()
    client.logout()

    staff_with(client, "django_q.view_schedule", "jobs.run_job_now")
    run_action(client, "/admin/django_q/schedule/", "run_schedule_now", [schedule.pk])
    job = Job.objects.get()
    assert job.job_type == "system:periodic" and job.payload["schedule_id"] == schedule.pk
    assert Schedule.objects.get(pk=schedule.pk).next_run == schedule.next_run


# ---------------------------------------------------------------- dashboard and /readyz


def test_the_dashboard_needs_the_job_view_permission(client):
    staff_with(client)
    assert client.get("/admin/jobs/dashboard/").status_code == 403
    client.logout()
    staff_with(client, "jobs.view_job")
    assert client.get("/admin/jobs/dashboard/").status_code == 200


def test_a_staff_user_without_the_job_view_permission_gets_no_readyz_details(client):
    staff_with(client)
    assert client.get("/readyz").json()["checks"]["redis"] == "ok"
    client.logout()
    staff_with(client, "jobs.view_job")
    assert client.get("/readyz").json()["checks"]["redis"] == {"ok": True}


# ---------------------------------------------------------------- django-q2's own pages


def task_row(success: bool):
    from django_q.models import Task

    now = timezone.now()
    return Task.objects.create(id=uuid.uuid4().hex, name=f"task-{uuid.uuid4().hex[:6]}", func="math.floor",
                               args=(1.5,), kwargs={}, started=now, stopped=now, success=success, result=None)


def broker_length() -> int:
    from django.conf import settings

    return get_redis().llen(f"django_q:{settings.Q_CLUSTER['name']}:q")


@pytest.mark.parametrize("page, success, perms", [
    ("failure", False, ["django_q.view_failure"]),
    ("failure", False, ["django_q.view_failure", "django_q.change_failure"]),  # and delete: the row goes
    ("success", True, ["django_q.view_success"]),
])
def test_django_q2_resubmit_needs_change_permission(client, page, success, perms):
    staff_with(client, *perms)
    row = task_row(success)
    url = f"/admin/django_q/{page}/"

    response = client.get(url)
    assert response.status_code == 200 and "resubmit_task" not in offered_actions(response)
    run_action(client, url, "resubmit_task", [row.pk])

    assert broker_length() == 0  # no task was pushed
    assert type(row).objects.filter(pk=row.pk).exists()


@pytest.mark.parametrize("page, success, perms", [
    ("failure", False, ["django_q.view_failure", "django_q.change_failure", "django_q.delete_failure"]),
    ("success", True, ["django_q.view_success", "django_q.change_success"]),
])
def test_django_q2_resubmit_works_for_those_allowed(client, page, success, perms):
    staff_with(client, *perms)
    row = task_row(success)

    run_action(client, f"/admin/django_q/{page}/", "resubmit_task", [row.pk])

    assert broker_length() == 1


@pytest.mark.parametrize("action, state", [("cancel", JobState.ACTIVE), ("run-now", JobState.SCHEDULED),
                                           ("run-schedule-now", None)])
def test_the_dashboard_job_controls_refuse_a_view_only_user(client, action, state):
    from django_q.models import Schedule

    staff_with(client, "jobs.view_job", "jobs.change_job", "jobs.add_queuepause")
    job = make_job(state=state) if state else None
    schedule = Schedule.objects.create(name="dash-now", func="jobs.system.periodic_noop", schedule_type=Schedule.CRON,
                                       cron="0 3 * * *", repeats=-1)
    page = client.get("/admin/jobs/dashboard/")
    assert page.status_code == 200 and b'id="job-controls"' not in page.content
    target = job.pk if job else schedule.pk
    assert client.post(f"/admin/jobs/dashboard/jobs/{action}/", {"ids": str(target)}).status_code == 403
    if job:
        after = Job.objects.get(pk=job.pk)
        assert after.state == state and after.cancel_requested_at is None and after.run_now_at is None
    else:
        assert not Job.objects.exists()


def test_the_dashboard_job_controls_act_for_those_allowed_and_refuse_bad_input(client):
    user = staff_with(client, "jobs.view_job", "jobs.cancel_job", "jobs.run_job_now")
    running, later = make_job(state=JobState.ACTIVE), make_job(state=JobState.SCHEDULED, ago=3600)
    assert b'id="job-controls"' in client.get("/admin/jobs/dashboard/").content
    assert client.post("/admin/jobs/dashboard/jobs/cancel/", {"ids": str(running.pk)}).status_code == 302
    assert client.post("/admin/jobs/dashboard/jobs/run-now/", {"ids": f"{later.pk}"}).status_code == 302
    assert Job.objects.get(pk=running.pk).cancelled_by == f"dashboard:{user.username}"
    assert Job.objects.get(pk=later.pk).state == JobState.PENDING
    response = client.post("/admin/jobs/dashboard/jobs/cancel/", {"ids": "12; DROP"}, follow=True)
    assert response.status_code == 200 and "Give job ids" in response.content.decode()
    response = client.post("/admin/jobs/dashboard/jobs/run-schedule-now/", {"ids": "999999"}, follow=True)
    assert response.status_code == 200 and "does not exist" in response.content.decode()
    assert client.post("/admin/jobs/dashboard/jobs/explode/", {"ids": "1"}).status_code == 404
