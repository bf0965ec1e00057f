"""Job ledger in the Django admin: see every job, filter, search by job id, subject (news:42) or unique key, read
payload and errors, retry dead jobs, cancel or delete. Staff only (the admin site's rule);
the actions need the ledger's change/delete permissions."""

import json
from functools import cached_property

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import connections
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from jobs import services
from jobs.models import CANCELLABLE_STATES, RUN_NOW_STATES, Heartbeat, Job, QueuePause
from jobs.queues import QUEUES
from jobs.registry import job_types


class EstimatedCountPaginator(Paginator):
    """Pages without COUNT(*) over a large ledger: the count is exact up to EXACT_UP_TO rows
    (a COUNT over a LIMITed subquery, which stops there), beyond that the optimizer's
    estimate for the same query (EXPLAIN: index statistics, no scan). The change list then
    says "about N" (templates/admin/jobs/job/pagination.html). A page past the real end is
    an empty page, not an error."""

    EXACT_UP_TO = 10_000
    estimated = False  # set by count

    @cached_property
    def count(self) -> int:
        qs = self.object_list.order_by()
        exact = qs.values("pk")[:self.EXACT_UP_TO + 1].count()
        self.estimated = exact > self.EXACT_UP_TO
        if not self.estimated:
            return exact
        return max(exact, self._explain_rows(qs))

    index_hint = None  # set by JobAdmin.get_paginator for a list filtered by state

    def page(self, number):
        """A page read in two steps: its ids first (an index-only walk that stops after
        the page), then those rows by primary key. MariaDB would otherwise walk the primary
        key backwards for `WHERE state = 'dead' ORDER BY id DESC`, through every newer row
        of other states (a million scheduled jobs) before finding a page of dead ones."""
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        ids = self._page_ids(bottom, top)
        by_pk = {job.pk: job for job in self.object_list.order_by().filter(pk__in=ids)}
        return self._get_page([by_pk[pk] for pk in ids if pk in by_pk], number, self)

    def _page_ids(self, bottom: int, top: int) -> list:
        ids = self.object_list.values_list("pk", flat=True)[bottom:top]
        connection = connections[ids.db]
        if not self.index_hint or connection.vendor != "mysql":
            return list(ids)
        sql, params = ids.query.sql_with_params()
        table = connection.ops.quote_name(self.object_list.model._meta.db_table)
        sql = sql.replace(f"FROM {table}", f"FROM {table} FORCE INDEX ({self.index_hint})", 1)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return [row[0] for row in cursor.fetchall()]

    @staticmethod
    def _explain_rows(qs) -> int:
        sql, params = qs.values("pk").query.sql_with_params()
        connection = connections[qs.db]
        if connection.vendor != "mysql":
            return 0
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + sql, params)
            names = [c[0].lower() for c in cursor.description]
            return max((int(row[names.index("rows")] or 0) for row in cursor.fetchall()), default=0)


def known_values_filter(values):
    """A change-list filter offering `values()` (the queues, the registered job types) instead
    of Django's SELECT DISTINCT over the whole ledger on every page view. A value given in
    the URL that is not in the list still filters."""

    class KnownValuesFilter(admin.AllValuesFieldListFilter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # builds a lazy DISTINCT queryset, never run
            chosen = [self.lookup_val] if isinstance(self.lookup_val, str) else list(self.lookup_val or [])
            self.lookup_choices = sorted(set(values()) | set(chosen))

    return KnownValuesFilter


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "job_type", "queue", "state", "attempts", "max_retries", "run_at", "started_at",
                    "finished_at", "subject", "short_error")
    list_filter = ("state", ("queue", known_values_filter(lambda: QUEUES)),
                   ("job_type", known_values_filter(lambda: job_types().keys())))
    search_fields = ("=id", "=subject", "unique_key")
    actions = ["retry_now", "run_now", "cancel", "delete_jobs"]
    change_form_template = "admin/jobs/job/change_form.html"  # the job page's cancel / run-now buttons
    list_per_page = 50
    show_full_result_count = False  # COUNT(*) over a large ledger on every page view
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter value over the ledger
    paginator = EstimatedCountPaginator
    exclude = ("payload", "errors", "last_error")
    readonly_fields = ("job_type", "queue", "state", "attempts", "max_retries", "timeout", "run_at", "created_at",
                       "dispatched_at", "started_at", "finished_at", "lease_expires_at", "worker", "unique_key",
                       "live_key", "subject", "waiting_reason", "result", "payload_pretty", "last_error_pretty", "errors_pretty",
                       "priority", "expires_at", "cancel_requested_at", "cancelled_at", "cancelled_by", "run_now_at",
                       "run_now_by")

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        paginator = super().get_paginator(request, queryset, per_page, orphans, allow_empty_first_page)
        # Filtered to one state, newest first (no column sort chosen): walk (state, id).
        if request.GET.get("state__exact") and "o" not in request.GET:
            paginator.index_hint = "job_state_id_idx"
        return paginator

    def has_add_permission(self, request):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # ours refuses running jobs
        return actions

    @admin.display(description=_("last error"))
    def short_error(self, obj):
        return (obj.last_error.splitlines() or [""])[0][:80]

    @admin.display(description=_("payload"))
    def payload_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, ensure_ascii=False))

    @admin.display(description=_("last error"))
    def last_error_pretty(self, obj):
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", obj.last_error or "-")

    @admin.display(description=_("errors, one per failed attempt"))
    def errors_pretty(self, obj):
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>",
                           json.dumps(obj.errors, indent=2, ensure_ascii=False))

    @admin.action(description=_("Retry now (dead or retry → pending, attempts reset)"), permissions=["change"])
    def retry_now(self, request, queryset):
        count = services.jobs_retry_now(queryset.values_list("pk", flat=True))
        self.message_user(request, ngettext("%(count)d job queued to run again.", "%(count)d jobs queued to run again.",
                                            count) % {"count": count}, messages.SUCCESS)

    # Job controls: each behind a permission of its own (Meta.permissions), which a view-only
    # staff member lacks; who acted is recorded on the job. Rules live in jobs/services/.
    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm("jobs.cancel_job")

    def has_run_now_permission(self, request, obj=None):
        return request.user.has_perm("jobs.run_job_now")

    @admin.action(description=_("Cancel (running jobs are asked to stop)"), permissions=["cancel"])
    def cancel(self, request, queryset):
        count = services.jobs_cancel(queryset.values_list("pk", flat=True), by=_who(request))
        self.message_user(request, ngettext("%(count)d job cancelled (a running one stops within its grace).",
                                            "%(count)d jobs cancelled (running ones stop within their grace).",
                                            count) % {"count": count}, messages.SUCCESS)

    @admin.action(description=_("Run now (scheduled or retry jobs)"), permissions=["run_now"])
    def run_now(self, request, queryset):
        count = services.jobs_run_now(queryset.values_list("pk", flat=True), by=_who(request))
        self.message_user(request, ngettext("%(count)d job set to run now.", "%(count)d jobs set to run now.",
                                            count) % {"count": count}, messages.SUCCESS)

    def get_urls(self):
        from django.urls import path

        return [
            path("<int:job_id>/cancel/", self.admin_site.admin_view(self.cancel_view), name="jobs_job_cancel"),
            path("<int:job_id>/run-now/", self.admin_site.admin_view(self.run_now_view), name="jobs_job_run_now"),
        ] + super().get_urls()

    def _job_page_control(self, request, job_id, allowed, act, done_message, refused_message):
        from django.core.exceptions import PermissionDenied
        from django.http import HttpResponseNotAllowed
        from django.shortcuts import redirect

        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not allowed(request):
            raise PermissionDenied
        if not Job.objects.filter(pk=job_id).exists():
            self.message_user(request, _("Job %(id)s does not exist.") % {"id": job_id}, messages.ERROR)
            return redirect("admin:jobs_job_changelist")
        if act([job_id], by=_who(request)):
            self.message_user(request, done_message % {"id": job_id}, messages.SUCCESS)
        else:
            self.message_user(request, refused_message % {"id": job_id}, messages.WARNING)
        return redirect("admin:jobs_job_change", job_id)

    def cancel_view(self, request, job_id):
        return self._job_page_control(request, job_id, self.has_cancel_permission, services.jobs_cancel,
                                      _("Job %(id)s cancelled (if running, it stops within its grace)."),
                                      _("Job %(id)s was not cancelled: it is finished or was asked already."))

    def run_now_view(self, request, job_id):
        return self._job_page_control(request, job_id, self.has_run_now_permission, services.jobs_run_now,
                                      _("Job %(id)s set to run now."),
                                      _("Job %(id)s was not set to run now: only scheduled or retry jobs can be."))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = Job.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        extra_context = {**(extra_context or {}),
                         "can_cancel_job": job is not None and self.has_cancel_permission(request)
                         and job.state in CANCELLABLE_STATES and job.cancel_requested_at is None,
                         "can_run_job_now": job is not None and self.has_run_now_permission(request)
                         and job.state in RUN_NOW_STATES}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description=_("Delete (not running jobs)"), permissions=["delete"])
    def delete_jobs(self, request, queryset):
        count = services.jobs_delete(queryset.values_list("pk", flat=True))
        self.message_user(request, ngettext("%(count)d job deleted.", "%(count)d jobs deleted.", count)
                          % {"count": count}, messages.SUCCESS)


def _who(request) -> str:
    """Recorded on the job as cancelled_by / run_now_by."""
    return f"admin:{request.user.get_username()}"


@admin.register(QueuePause)
class QueuePauseAdmin(admin.ModelAdmin):
    list_display = ("queue", "paused_at", "paused_by")


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "seen_at")
    readonly_fields = ("name", "kind", "seen_at", "details")


# django-q2's admin, with permission-checked actions (imports django_q.admin first, so its
# registrations exist to be replaced whatever the order of INSTALLED_APPS).
from jobs import django_q_admin  # noqa: E402,F401
