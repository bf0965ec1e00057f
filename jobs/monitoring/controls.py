"""The dashboard's job controls: cancel or run now by job id, run a periodic task now. Each
needs its own permission (jobs.cancel_job, jobs.run_job_now), checked here whatever the
page showed; the rules live in jobs/services/. Bad input is a message, never a 500."""

from __future__ import annotations

import logging
import re

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from jobs import services

logger = logging.getLogger(__name__)

MAX_IDS = 100  # one form's worth
PERMISSIONS = {"cancel": "jobs.cancel_job", "run-now": "jobs.run_job_now", "run-schedule-now": "jobs.run_job_now"}


def _ids(text: str) -> list[int] | None:
    parts = [p for p in re.split(r"[\s,]+", text or "") if p]
    if not parts or len(parts) > MAX_IDS or not all(p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]


@require_POST
def job_control(request, action: str):
    if action not in PERMISSIONS:
        raise Http404("unknown action")
    if not request.user.has_perm(PERMISSIONS[action]):
        raise PermissionDenied
    by = f"dashboard:{request.user.get_username()}"
    ids = _ids(request.POST.get("ids", ""))
    if ids is None:
        messages.error(request, _("Give job ids (at most %(max)d, separated by spaces or commas).") % {"max": MAX_IDS})
        return redirect("jobs_dashboard")
    if action == "run-schedule-now":
        from django_q.models import Schedule

        from jobs.errors import PermanentError

        for schedule_id in ids[:10]:
            try:
                job_id = services.schedule_run_now(schedule_id, by=by)
                messages.success(request, _("Periodic task %(id)s runs now as job %(job)s; its next run is unchanged.")
                                 % {"id": schedule_id, "job": job_id})
            except Schedule.DoesNotExist:
                messages.error(request, _("Periodic task %(id)s does not exist.") % {"id": schedule_id})
            except PermanentError as exc:
                messages.error(request, str(exc))
        return redirect("jobs_dashboard")
    if action == "cancel":
        count = services.jobs_cancel(ids, by=by)
        text = ngettext("%(count)d of %(asked)d job cancelled (a running one stops within its grace).",
                        "%(count)d of %(asked)d jobs cancelled (running ones stop within their grace).", len(ids))
    else:
        count = services.jobs_run_now(ids, by=by)
        text = ngettext("%(count)d of %(asked)d job set to run now.", "%(count)d of %(asked)d jobs set to run now.",
                        len(ids))
    logger.info("dashboard %s by %s: %d of %s", action, request.user.get_username(), count, ids[:20])
    (messages.success if count == len(ids) else messages.warning)(request, text % {"count": count, "asked": len(ids)})
    return redirect("jobs_dashboard")
