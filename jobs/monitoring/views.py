"""HTTP views for operations: /healthz, /readyz, /metrics and the staff dashboard at
/admin/jobs/dashboard/. Thin: the numbers come from the jobs.monitoring package
(jobs/monitoring/__init__.py, jobs/monitoring/metrics.py), the actions from the jobs.services
package. The dashboard speaks the request's language; probes and metrics stay English.

Access:
- /healthz: open; says only that the process answers.
- /readyz: open status code and per-check ok/fail (what a probe needs, nothing more);
  the details (error texts, counts, ages) only with `Authorization: Bearer <METRICS_TOKEN>`
  or to a logged-in staff user with jobs.view_job.
- /metrics: with METRICS_TOKEN set, only with that bearer token; without it, 403 unless
  METRICS_PUBLIC is on (then restrict it at the proxy). Each answer is reused for
  METRICS_CACHE_SECONDS.
- dashboard: the admin site's staff check and jobs.view_job; pausing needs
  jobs.add_queuepause and resuming jobs.delete_queuepause (superusers have all). POSTs are
  CSRF-checked.
"""

from __future__ import annotations

import hmac
import logging

from django.apps import apps
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from jobs import services
from jobs.monitoring import charts as monitoring_charts
from jobs.monitoring import metrics as monitoring_metrics
from jobs import monitoring
from jobs.probes import check_database, check_redis
from jobs.models import Job, JobState
from jobs.queues import QUEUES

logger = logging.getLogger(__name__)


def _has_token(request) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return False
    given = request.headers.get("Authorization", "")
    return given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode())


VIEW_PERMISSION = "jobs.view_job"  # the dashboard and /readyz's details show the ledger


def _may_view_jobs(request) -> bool:
    try:
        user = request.user
        return bool(user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION))
    except Exception:  # the session lives in the database, which may be what is down
        return False


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# ---------------------------------------------------------------- probes


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


def readiness(now=None) -> tuple[bool, dict[str, dict]]:
    """MySQL and Redis answer, the health check ran recently, dead jobs are few enough."""
    now = now or timezone.now()
    checks: dict[str, dict] = {}
    try:
        check_database()
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": _error(exc)}
    try:
        check_redis()
        checks["redis"] = {"ok": True}
        from jobs.progress import readiness_check

        checks["queues_moving"] = readiness_check()
        from jobs.watchdog import restarts_by_loop

        # Informational: a stuck loop was already replaced; a queue it held up shows as stalled.
        checks["loops"] = {"ok": True, "restarts_10m": restarts_by_loop()}
    except Exception as exc:
        checks.setdefault("redis", {"ok": False, "error": _error(exc)})
        checks.setdefault("queues_moving", {"ok": False, "error": _error(exc)})
    if checks["database"]["ok"]:
        try:
            health = monitoring.health_heartbeat(now)
            max_age = settings.READYZ_HEARTBEAT_MAX_AGE
            checks["health_heartbeat"] = {"ok": health is not None and health["age_s"] <= max_age,
                                          "age_s": health["age_s"] if health else None, "max_age_s": max_age,
                                          "problems": health["problems"] if health else []}
            dead = Job.objects.filter(state=JobState.DEAD).count()
            checks["dead_jobs"] = {"ok": dead <= settings.READYZ_MAX_DEAD_JOBS, "count": dead,
                                   "max": settings.READYZ_MAX_DEAD_JOBS}
        except Exception as exc:
            checks["health_heartbeat"] = {"ok": False, "error": _error(exc)}
            checks["dead_jobs"] = {"ok": False, "error": _error(exc)}
    else:
        checks["health_heartbeat"] = {"ok": False, "error": "database unavailable"}
        checks["dead_jobs"] = {"ok": False, "error": "database unavailable"}
    return all(c["ok"] for c in checks.values()), checks


@never_cache
@require_GET
def readyz(request):
    ready, checks = readiness()
    detailed = _has_token(request) or _may_view_jobs(request)
    body = {"status": "ok" if ready else "fail",
            "checks": checks if detailed else {name: "ok" if c["ok"] else "fail" for name, c in checks.items()}}
    if not ready:
        logger.warning("readyz: not ready: %s", ", ".join(n for n, c in checks.items() if not c["ok"]))
    return JsonResponse(body, status=200 if ready else 503)


@never_cache
@require_GET
def metrics(request):
    if settings.METRICS_TOKEN and not _has_token(request):
        response = HttpResponse("metrics need the bearer token\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not settings.METRICS_TOKEN and not settings.METRICS_PUBLIC:
        return HttpResponse("metrics are closed: set METRICS_TOKEN (bearer) or METRICS_PUBLIC=1\n", status=403,
                            content_type="text/plain")
    body, content_type = monitoring_metrics.render(request.headers.get("Accept"),
                                                   cache_seconds=settings.METRICS_CACHE_SECONDS)
    return HttpResponse(body, content_type=content_type)


# ---------------------------------------------------------------- dashboard


def _queue_rows(overview: dict[str, dict]) -> list[dict]:
    return [{"name": name, **row} for name, row in overview.items()]


def format_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) < 1:
        return gettext("%(value)s ms") % {"value": f"{value * 1000:.0f}"}
    if abs(value) < 120:
        return gettext("%(value)s s") % {"value": f"{value:.2f}"}
    return gettext("%(value)s min") % {"value": f"{value / 60:.1f}"}


def _timing_rows(timings: dict[str, dict]) -> list[dict]:
    keys = ("p50", "p90", "p99", "max")
    return [{"queue": queue, "count": t["lateness"]["count"],
             "lateness": [format_seconds(t["lateness"][k]) for k in keys],
             "duration": [format_seconds(t["duration"][k]) for k in keys]}
            for queue, t in timings.items()]


def dashboard(request):
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied(gettext("The jobs dashboard needs the %(permission)s permission.")
                               % {"permission": VIEW_PERMISSION})
    now = timezone.now()
    redis = monitoring.redis_state()
    health = monitoring.health_heartbeat(now)
    overview = monitoring.queue_overview(now, redis=redis)
    history = monitoring.throughput(now)
    failures = [{"job": job, "url": reverse("admin:jobs_job_change", args=[job.pk]),
                 "error": monitoring.first_line(job.last_error, 120)}
                for job in monitoring.recent_failures(20)]
    context = {
        **admin.site.each_context(request),
        "title": gettext("Jobs dashboard"),
        "jobs_app_name": apps.get_app_config("jobs").verbose_name,
        "state_names": {state.value: state.label for state in JobState},
        "now": now,
        "queues": _queue_rows(overview),
        "totals": {k: sum(r[k] or 0 for r in overview.values())
                   for k in ("scheduled", "pending", "active", "retry", "dead", "completed_1h", "failed_1h",
                             "completed_today", "failed_today", "depth", "workers_alive", "expired_today")},
        "hourly_chart": monitoring_charts.stacked_bars(history["hourly"], title=gettext("Last 24 hours, per hour"),
                                                       width=640, label_every=3),
        "daily_chart": monitoring_charts.stacked_bars(history["daily"], title=gettext("Last 7 days, per day"),
                                                      width=440),
        "timings": _timing_rows(monitoring.timing_percentiles(now)),
        "lateness_sample": monitoring.LATENESS_SAMPLE,
        "failures": failures,
        "dead_list_url": reverse("admin:jobs_job_changelist") + "?state__exact=dead",
        "clusters": monitoring.cluster_rows(redis["clusters"], now),
        "dispatchers": monitoring.dispatcher_rows(now),
        "health": health,
        "health_fresh": health is not None and health["age_s"] <= settings.READYZ_HEARTBEAT_MAX_AGE,
        "redis_error": redis["error"],
        "gauges": redis["gauges"],
        "can_pause": request.user.has_perm("jobs.add_queuepause"),
        "can_resume": request.user.has_perm("jobs.delete_queuepause"),
        "can_cancel_job": request.user.has_perm("jobs.cancel_job"),
        "can_run_job_now": request.user.has_perm("jobs.run_job_now"),
    }
    return TemplateResponse(request, "admin/jobs/dashboard.html", context)


@require_POST
def queue_action(request, queue: str, action: str):
    if queue not in QUEUES or action not in ("pause", "resume"):
        raise Http404("unknown queue or action")
    if not request.user.has_perm("jobs.add_queuepause" if action == "pause" else "jobs.delete_queuepause"):
        raise PermissionDenied
    if action == "pause":
        changed = services.queue_pause(queue, by=f"admin:{request.user.get_username()}")
        text = (gettext("Queue %(queue)s paused: its jobs wait until it is resumed.") if changed
                else gettext("Queue %(queue)s was already paused."))
    else:
        changed = services.queue_resume(queue)
        text = gettext("Queue %(queue)s resumed.") if changed else gettext("Queue %(queue)s was not paused.")
    text %= {"queue": queue}
    logger.info("queue %s %s by %s (changed: %s)", queue, action, request.user.get_username(), changed)
    messages.success(request, text)
    return redirect("jobs_dashboard")
