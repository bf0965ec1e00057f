"""django-q2's own admin pages (failed and successful tasks, schedules), re-registered so
that their actions check permissions: django-q2's "resubmit" is offered to anyone who can
view the list, and it pushes a signed task to the workers.

Resubmitting needs change permission on the list (on failures also delete, as the failure
row is deleted once resubmitted). The job ledger (jobs.Job) remains the place to retry jobs.
"""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _
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


class CheckedScheduleAdmin(q_admin.ScheduleAdmin):
    """Unchanged for now: editing needs change permission already (Django's own rule)."""


for model, model_admin in ((Success, CheckedSuccessAdmin), (Failure, CheckedFailureAdmin),
                           (Schedule, CheckedScheduleAdmin)):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
