from django.contrib import admin
from django.urls import include, path

from analytics import views as analytics_views

urlpatterns = [
    # Operations (issue 7): /healthz, /readyz, /metrics, /admin/jobs/dashboard/ (before the admin's routes).
    path("", include("jobs.monitoring.urls")),
    path("admin/", admin.site.urls),
    path("api/analytics/events", analytics_views.events, name="analytics-events"),
    path("wechat/", include("wechat.urls")),
]
