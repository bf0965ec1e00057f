"""django-q2's own admin pages (failed and successful tasks, schedules), re-registered so
that their actions check permissions: django-q2's "resubmit" is offered to anyone who can
view the list, and it pushes a signed task to the workers.

Resubmitting needs change permission on the list (on failures also delete, as the failure
row is deleted once resubmitted). The job ledger (jobs.Job) remains the place to retry jobs.
"""

from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django_q import admin as q_admin
from django_q.models import Failure, Schedule, Success


@admin.action(description=_("Resubmit selected tasks to queue"), permissions=["resubmit"])
def resubmit_task(model_admin, request, queryset):
    q_admin.resubmit_task(model_admin, request, queryset)


class CheckedSuccessAdmin(q_admin.TaskAdmin):
    actions = [resubmit_task]

    def has_resubmit_permission(self, request):
        return self.has_change_permission(request)


class CheckedFailureAdmin(q_admin.FailAdmin):
    actions = [resubmit_task]

    def has_resubmit_permission(self, request):
        return self.has_change_permission(request) and self.has_delete_permission(request)


@admin.action(description=_("Run now (one extra slot; the next run stays on time)"), permissions=["run_now"])
def run_schedule_now(model_admin, request, queryset):
    from jobs import services
    from jobs.errors import PermanentError

    started, refused = 0, []
    for schedule in queryset[:100]:  # bounded: a person's selection
        try:
            services.schedule_run_now(schedule.pk, by=f"admin:{request.user.get_username()}")
            started += 1
        except PermanentError as exc:
            refused.append(str(exc))
    model_admin.message_user(request, ngettext("%(count)d periodic task set to run now.",
                                               "%(count)d periodic tasks set to run now.", started)
                             % {"count": started}, messages.SUCCESS)
    for reason in refused[:10]:
        model_admin.message_user(request, reason, messages.ERROR)


class CheckedScheduleAdmin(q_admin.ScheduleAdmin):
    """Editing needs change permission already (Django's own rule); "Run now" needs
    jobs.run_job_now, the same permission as running a job now."""

    actions = [run_schedule_now]

    def has_run_now_permission(self, request):
        return request.user.has_perm("jobs.run_job_now")


for model, model_admin in ((Success, CheckedSuccessAdmin), (Failure, CheckedFailureAdmin),
                           (Schedule, CheckedScheduleAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
