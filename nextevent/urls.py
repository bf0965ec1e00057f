from django.contrib import admin
from django.urls import path

from analytics import views as analytics_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/analytics/events", analytics_views.events, name="analytics-events"),
]
