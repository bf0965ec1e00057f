"""Analytics' part in the engine's cleanup and monitoring, connected in AnalyticsConfig.ready()."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

from analytics.ingest import STREAM_KEY
from analytics.services import analytics_cleanup
from jobs.monitoring import AppGauge
from analytics.buffer import buffer_redis


def analytics_cleanup_raw(sender, *, now, **kwargs) -> int:
    """jobs.maintenance.cleanup_requested: the daily cleanup prunes old raw events too."""
    return analytics_cleanup(now=now)


analytics_cleanup_raw.cleanup_label = "analytics_raw"


def analytics_gauges(sender, **kwargs) -> list[AppGauge]:
    """jobs.monitoring.gauges_requested: the buffer's length on /metrics, the dashboard and
    `jobs stats` (0 when the stream does not exist), read from the buffer's own Redis
    when ANALYTICS_REDIS_URL puts it there."""
    return [AppGauge(name="nextevent_analytics_buffer_length", label=_("analytics buffer"),
                     help=f"Events waiting in the analytics stream ({STREAM_KEY})",
                     value=int(buffer_redis().xlen(STREAM_KEY)))]
