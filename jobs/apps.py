from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = _("Jobs")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from jobs import registry
        from jobs.health import health_checked
        from jobs.monitoring.alerts import alert_on_health_check

        # Every app's job types and periodic tasks, in every process (web and workers).
        registry.autodiscover()
        # Alerts act on every health result, including in the worker that runs the check.
        health_checked.connect(alert_on_health_check, dispatch_uid="jobs.alerts")
