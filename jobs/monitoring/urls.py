"""Operations routes, included by nextevent/urls.py before the admin site's own."""

from django.contrib import admin
from django.urls import path

from jobs.monitoring import controls as monitoring_controls
from jobs.monitoring import views as monitoring_views

urlpatterns = [
    path("healthz", monitoring_views.healthz, name="healthz"),
    path("readyz", monitoring_views.readyz, name="readyz"),
    path("metrics", monitoring_views.metrics, name="metrics"),
    path("admin/jobs/dashboard/", admin.site.admin_view(monitoring_views.dashboard), name="jobs_dashboard"),
    path("admin/jobs/dashboard/queues/<str:queue>/<str:action>/",
         admin.site.admin_view(monitoring_views.queue_action), name="jobs_dashboard_queue"),
    path("admin/jobs/dashboard/jobs/<str:action>/", admin.site.admin_view(monitoring_controls.job_control),
         name="jobs_dashboard_job_control"),
]
