"""The job admin's change list on a large ledger: pages without COUNT(*) over the
whole table nor SELECT DISTINCT for its filters, through the test client on the real
database. The pagination is exact for small results and says "about" past its limit."""

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.admin import EstimatedCountPaginator
from jobs.models import Job, JobState
from tests.ops_support import make_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = User.objects.create_user("ledger-staff", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


def ledger_queries(client, url):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return response, [q["sql"] for q in ctx.captured_queries if "jobs_job" in q["sql"]]


def test_the_job_list_pages_on_an_estimate_past_its_limit_and_lists_no_distinct_values(client, staff, monkeypatch):
    from django.contrib import admin

    monkeypatch.setattr(EstimatedCountPaginator, "EXACT_UP_TO", 5)
    monkeypatch.setattr(admin.site._registry[Job], "list_per_page", 5)
    for i in range(12):
        make_job(state=JobState.COMPLETED, queue="news" if i % 2 else "default", ago=600 + i)
    dead = [make_job(state=JobState.DEAD, queue="news", job_type="news:expiration", ago=60) for _ in range(2)]

    response, sqls = ledger_queries(client, "/admin/jobs/job/")
    assert not [s for s in sqls if "DISTINCT" in s.upper()], sqls  # the filters' values come from the code
    counts = [s for s in sqls if "COUNT(" in s.upper()]
    assert counts and all("LIMIT" in s.upper() for s in counts), counts  # never the whole table
    paginator = response.context["cl"].paginator
    assert paginator.estimated and paginator.count >= 6
    assert "about " in response.content.decode()
    listed = [job.pk for job in response.context["cl"].result_list]
    assert listed == sorted(Job.objects.values_list("pk", flat=True), reverse=True)[:5]  # newest first
    page = response.content.decode()
    assert "?queue=news" in page and "?job_type=news%3Aexpiration" in page  # filters still offered

    monkeypatch.setattr(admin.site._registry[Job], "list_per_page", 1)  # two pages of dead jobs
    response, sqls = ledger_queries(client, "/admin/jobs/job/?state__exact=dead")
    cl = response.context["cl"]
    assert not cl.paginator.estimated and cl.result_count == 2  # small: exact
    assert [job.pk for job in cl.result_list] == [dead[1].pk]
    response = client.get("/admin/jobs/job/?state__exact=dead&p=2")
    assert [job.pk for job in response.context["cl"].result_list] == [dead[0].pk]
    # The page's ids come from the (state, id) index, which stops after the page; MariaDB
    # would otherwise walk the primary key through every newer row of other states.
    assert any("FORCE INDEX (job_state_id_idx)" in s and "ORDER BY" in s for s in sqls), sqls
    assert "about " not in response.content.decode()
