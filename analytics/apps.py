from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AnalyticsConfig(AppConfig):
    name = "analytics"
    verbose_name = _("Analytics")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from analytics.receivers import analytics_cleanup_raw, analytics_gauges
        from jobs.maintenance import cleanup_requested
        from jobs.monitoring import gauges_requested

        cleanup_requested.connect(analytics_cleanup_raw, dispatch_uid="analytics.cleanup")
        gauges_requested.connect(analytics_gauges, dispatch_uid="analytics.gauges")
