from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "analytics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from analytics.receivers import analytics_cleanup_raw, analytics_gauges
        from jobs.maintenance import cleanup_requested
        from jobs.monitoring import gauges_requested

        cleanup_requested.connect(analytics_cleanup_raw, dispatch_uid="analytics.cleanup")
        gauges_requested.connect(analytics_gauges, dispatch_uid="analytics.gauges")
