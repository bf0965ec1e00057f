"""Analytics in the admin: counters per news item and day, today's most viewed items, the
batches applied, the entries quarantined, and a by-day table on each News change page (registered below)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from analytics.ingest import EVENT_TYPES
from analytics.models import AppliedBatch, DailyStat, QuarantinedEvent, TopNewsToday
from analytics.selectors import news_daily_stats
from analytics.services import buffer_status
from news.models import News


class _ReadOnly(admin.ModelAdmin):
    """Counters are written by the batch job only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _news_link(obj):
    url = reverse("admin:news_news_change", args=[obj.news_id])
    return format_html('<a href="{}">{}</a>', url, obj.news)


@admin.register(DailyStat)
class DailyStatAdmin(_ReadOnly):
    list_display = ("day", "news_item", "event_type", "count")
    list_filter = ("event_type", "day")
    search_fields = ("=news__id", "news__title")
    date_hierarchy = "day"
    list_select_related = ("news",)
    show_full_result_count = False

    @admin.display(description=_("news item"), ordering="news_id")
    def news_item(self, obj):
        return _news_link(obj)


@admin.register(TopNewsToday)
class TopNewsTodayAdmin(_ReadOnly):
    list_display = ("news_item", "count", "day")
    list_display_links = None
    list_select_related = ("news",)
    list_per_page = 50

    def get_queryset(self, request):
        return (super().get_queryset(request).filter(day=timezone.localdate(), event_type="view")
                .order_by("-count", "news_id"))

    @admin.display(description=_("news item"))
    def news_item(self, obj):
        return _news_link(obj)

    def changelist_view(self, request, extra_context=None):
        status = buffer_status()
        title = gettext("Top news by views today (%(day)s)") % {"day": date_format(timezone.localdate())}
        waiting = ngettext("%(count)d event waiting in the buffer, not yet counted",
                           "%(count)d events waiting in the buffer, not yet counted",
                           status["length"]) % {"count": status["length"]}
        extra_context = {**(extra_context or {}), "title": f"{title}; {waiting}"}
        return super().changelist_view(request, extra_context)


@admin.register(AppliedBatch)
class AppliedBatchAdmin(_ReadOnly):
    list_display = ("id", "applied_at", "reason", "events", "counted", "dropped_unknown_news", "dropped_invalid",
                    "took_ms", "consumer")
    # No date_hierarchy: on a DateTimeField it needs MariaDB's time zone tables.
    list_filter = ("reason",)
    show_full_result_count = False
    exclude = ("entry_keys",)


@admin.register(QuarantinedEvent)
class QuarantinedEventAdmin(_ReadOnly):
    """Entries the batch could not count, with the entry and the error. Read-only: it
    needs analytics' view permission like every model here (Django's default check), and
    nothing can be edited or deleted from the admin."""

    list_display = ("stream_id", "occurred_at", "stage", "short_error", "quarantined_at")
    list_filter = ("stage",)
    search_fields = ("=stream_id", "error")
    readonly_fields = ("stream_id", "occurred_at", "stage", "error", "fields", "consumer", "quarantined_at")
    show_full_result_count = False

    @admin.display(description=_("error"))
    def short_error(self, obj):
        return obj.error if len(obj.error) <= 120 else obj.error[:117] + "..."


# The by-day table's column headings, for people (the event types themselves are data keys).
COLUMN_NAMES = {"day": _("day"), "view": _("views"), "share": _("shares"), "like": _("likes"),
                "unique_users": _("unique users")}


def news_analytics_table(news, days: int = 30) -> str:
    """HTML for the News change page: the item's last `days` days of counters."""
    if news is None or news.pk is None:
        return "-"
    rows = news_daily_stats(news_id=news.pk, days=days)
    link = reverse("admin:analytics_dailystat_changelist") + f"?news__id__exact={news.pk}"
    if not rows:
        return format_html('{} <a href="{}">{}</a>',
                           ngettext("No events counted in the last %(days)d day.",
                                    "No events counted in the last %(days)d days.", days) % {"days": days},
                           link, gettext("All days"))
    columns = [*EVENT_TYPES, "unique_users"]
    head = format_html_join("", "<th>{}</th>", ((COLUMN_NAMES.get(c, c),) for c in ["day", *columns]))
    body = format_html_join(
        "", "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((date_format(row["day"]),), *((row.get(c, 0),) for c in columns))),)
         for row in rows))
    return format_html('<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>'
                       '<p><a href="{}">{}</a>. {}</p>',
                       head, body, link, gettext("All days"),
                       gettext("Events in the buffer are counted within 5 minutes."))


# The news app does not know about analytics: this app registers News's admin again, as a
# subclass of whatever is registered (Django's public get_model_admin), with the counters.
_news_admin = type(admin.site.get_model_admin(News))


class NewsWithAnalyticsAdmin(_news_admin):
    readonly_fields = (*_news_admin.readonly_fields, "analytics_by_day")

    @admin.display(description=_("analytics by day"))
    def analytics_by_day(self, obj):
        return news_analytics_table(obj)


admin.site.unregister(News)
admin.site.register(News, NewsWithAnalyticsAdmin)
