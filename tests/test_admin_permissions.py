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
    assert offered_actions(client.get("/admin/jobs/job/")) == {"retry_now", "cancel"}
    client.logout()
    staff_with(client, "jobs.view_job", "jobs.delete_job")
    assert offered_actions(client.get("/admin/jobs/job/")) == {"delete_jobs"}


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
