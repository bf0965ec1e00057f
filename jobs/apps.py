from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Registers the alerting hook of the 30-second health check in every process,
        # including the worker that runs it.
        from jobs import monitoring_alerts  # noqa: F401
