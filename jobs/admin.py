"""Job ledger in the Django admin: see every job, filter, search by job id, subject (news:42) or unique key, read
payload and errors, retry dead jobs, cancel or delete. Staff only (the admin site's rule);
the actions need the ledger's change/delete permissions."""

import json

from django.contrib import admin, messages
from django.utils.html import format_html

from jobs import services
from jobs.models import Heartbeat, Job, QueuePause


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "job_type", "queue", "state", "attempts", "max_retries", "run_at", "started_at",
                    "finished_at", "subject", "short_error")
    list_filter = ("state", "queue", "job_type")
    search_fields = ("=id", "=subject", "unique_key")
    actions = ["retry_now", "cancel", "delete_jobs"]
    list_per_page = 50
    show_full_result_count = False  # COUNT(*) over a large ledger on every page view
    exclude = ("payload", "errors", "last_error")
    readonly_fields = ("job_type", "queue", "state", "attempts", "max_retries", "timeout", "run_at", "created_at",
                       "dispatched_at", "started_at", "finished_at", "lease_expires_at", "worker", "unique_key",
                       "live_key", "subject", "waiting_reason", "result", "payload_pretty", "last_error_pretty", "errors_pretty")

    def has_add_permission(self, request):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # ours refuses running jobs
        return actions

    @admin.display(description="last error")
    def short_error(self, obj):
        return (obj.last_error.splitlines() or [""])[0][:80]

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, ensure_ascii=False))

    @admin.display(description="last error")
    def last_error_pretty(self, obj):
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", obj.last_error or "-")

    @admin.display(description="errors, one per failed attempt")
    def errors_pretty(self, obj):
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>",
                           json.dumps(obj.errors, indent=2, ensure_ascii=False))

    @admin.action(description="Retry now (dead or retry → pending, attempts reset)", permissions=["change"])
    def retry_now(self, request, queryset):
        count = services.jobs_retry_now(queryset.values_list("pk", flat=True))
        self.message_user(request, f"{count} job(s) queued to run again.", messages.SUCCESS)

    @admin.action(description="Cancel (scheduled, pending or retry jobs)", permissions=["change"])
    def cancel(self, request, queryset):
        count = services.jobs_cancel(queryset.values_list("pk", flat=True))
        self.message_user(request, f"{count} job(s) cancelled.", messages.SUCCESS)

    @admin.action(description="Delete (not running jobs)", permissions=["delete"])
    def delete_jobs(self, request, queryset):
        count = services.jobs_delete(queryset.values_list("pk", flat=True))
        self.message_user(request, f"{count} job(s) deleted.", messages.SUCCESS)


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
