from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy as _

from analytics import views as analytics_views

admin.site.site_header = _("NextEvent administration")
admin.site.site_title = _("NextEvent")

urlpatterns = [
    # Operations: /healthz, /readyz, /metrics, /admin/jobs/dashboard/ (before the admin's routes).
    path("", include("jobs.monitoring.urls")),
    path("admin/", admin.site.urls),
    # Django's set_language (POST, CSRF-checked): the admin's language switch sets the cookie.
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/analytics/events", analytics_views.events, name="analytics-events"),
    path("wechat/", include("wechat.urls")),
]
