"""Analytics counters, written only by the batch job (analytics/services.py).

Events wait in a Redis Stream (analytics/ingest.py); each batch chunk is applied in one
transaction that writes all of the tables below, so they always agree with each other."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from news.models import News


class DailyStat(models.Model):
    """Events of one type for one news item on one day (in TIME_ZONE)."""

    news = models.ForeignKey(News, verbose_name=_("news item"), on_delete=models.CASCADE,
                             related_name="analytics_daily")
    day = models.DateField(verbose_name=_("day"))
    event_type = models.CharField(verbose_name=_("event type"), max_length=16)
    count = models.BigIntegerField(verbose_name=_("count"), default=0)

    class Meta:
        verbose_name = _("daily count")
        verbose_name_plural = _("daily counts")
        ordering = ["-day", "news_id", "event_type"]
        constraints = [
            # The batch upserts on this key (INSERT ... ON DUPLICATE KEY UPDATE).
            models.UniqueConstraint(fields=["news", "day", "event_type"], name="analytics_daily_news_day_type"),
        ]
        indexes = [
            # "Top news by views today".
            models.Index(fields=["day", "event_type"], name="analytics_daily_day_type_idx"),
        ]

    def __str__(self):
        return f"news {self.news_id} {self.day} {self.event_type}={self.count}"


class TopNewsToday(DailyStat):
    """Admin view only: today's view counters, highest first."""

    class Meta:
        proxy = True
        verbose_name = _("top news by views today")
        verbose_name_plural = _("top news by views today")


class DailyUser(models.Model):
    """One row per (news item, day, user) that had any event: exact unique users per day.
    The batch inserts with INSERT IGNORE; the count is a COUNT(*) over the key's prefix."""

    pk = models.CompositePrimaryKey("news", "day", "user_id")
    news = models.ForeignKey(News, verbose_name=_("news item"), on_delete=models.CASCADE, related_name="+")
    day = models.DateField(verbose_name=_("day"))
    user_id = models.CharField(verbose_name=_("user id"), max_length=64)

    def __str__(self):
        return f"news {self.news_id} {self.day} user {self.user_id}"


class RawEvent(models.Model):
    """Every counted event as it was recorded, kept ANALYTICS_RAW_RETENTION_DAYS."""

    # Not a foreign key: a raw log outlives nothing it refers to beyond its retention, and
    # the bulk insert is cheaper without the check.
    news_id = models.BigIntegerField(verbose_name=_("news id"))
    event_type = models.CharField(verbose_name=_("event type"), max_length=16)
    user_id = models.CharField(verbose_name=_("user id"), max_length=64, blank=True)
    metadata = models.JSONField(verbose_name=_("metadata"), null=True, blank=True)
    occurred_at = models.DateTimeField(verbose_name=_("occurred at"), db_index=True,
                                       help_text=_("When the buffer accepted it"))
    stream_id = models.CharField(verbose_name=_("stream id"), max_length=40, help_text=_("Its id in the Redis Stream"))

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.event_type} news {self.news_id} at {self.occurred_at}"


class AppliedBatch(models.Model):
    """The buffer entries one committed chunk applied, written in that chunk's transaction:
    a replay of any of them (a batch killed after commit but before XACK) is skipped.

    A chunk read fresh from the stream (XREADGROUP >) holds every entry between its first
    and last id, so the range says it all; a chunk of taken-over entries may have gaps, so
    it lists its ids. Ids are stored as sortable keys (see analytics.services.sort_key)."""

    first_key = models.CharField(verbose_name=_("first key"), max_length=32)
    last_key = models.CharField(verbose_name=_("last key"), max_length=32, db_index=True)
    entry_keys = models.TextField(verbose_name=_("entry keys"), blank=True,
                                  help_text=_("Space-separated; empty: the whole range"))
    reason = models.CharField(verbose_name=_("reason"), max_length=32, blank=True)
    consumer = models.CharField(verbose_name=_("consumer"), max_length=191, blank=True)
    events = models.PositiveIntegerField(verbose_name=_("events"), default=0, help_text=_("Entries in the chunk"))
    counted = models.PositiveIntegerField(verbose_name=_("counted"), default=0)
    dropped_unknown_news = models.PositiveIntegerField(verbose_name=_("dropped unknown news"), default=0)
    dropped_invalid = models.PositiveIntegerField(default=0, verbose_name=_("quarantined"),
                                                  help_text=_("Entries quarantined (see Quarantined events)"))
    took_ms = models.PositiveIntegerField(verbose_name=_("took (ms)"), default=0)
    applied_at = models.DateTimeField(verbose_name=_("applied at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("applied batch")
        verbose_name_plural = _("applied batches")
        ordering = ["-id"]

    def __str__(self):
        return gettext("batch %(id)s: %(counted)s counted") % {"id": self.pk, "counted": self.counted}


class ApplyLock(models.Model):
    """One row, locked FOR UPDATE by each chunk's transaction: chunks apply one at a time,
    so the replay check sees every earlier commit and two batches cannot deadlock on the
    same hot news rows. Reading, parsing and aggregating still run in parallel."""

    name = models.CharField(verbose_name=_("name"), max_length=32, unique=True)
    held_by = models.CharField(verbose_name=_("held by"), max_length=191, blank=True)
    acquired_at = models.DateTimeField(verbose_name=_("acquired at"), null=True, blank=True)

    def __str__(self):
        return f"lock {self.name} (last {self.held_by})"


class QuarantinedEvent(models.Model):
    """A buffer entry the batch could not count: one that is not a valid event (written by
    an older version, or by hand with XADD), or one whose write the database refused. It
    is kept here, with the error, instead of stopping every later batch; its chunk's other
    entries are counted. Written only by the batch (analytics/quarantine.py)."""

    # Unique: a replayed quarantine (a batch killed after its commit) adds nothing.
    stream_id = models.CharField(verbose_name=_("stream id"), max_length=40, unique=True,
                                 help_text=_("Its id in the Redis Stream"))
    # Text, not JSON: the entry is whatever reached the stream, and this row must be
    # writable whatever it holds (stored as ASCII-escaped JSON, cut at 64 KB).
    fields = models.TextField(verbose_name=_("fields"),
                              help_text=_("The entry's fields as JSON (bytes that are not UTF-8 as \\x escapes)"))
    error = models.TextField(verbose_name=_("error"), help_text=_("Why it was not counted"))
    stage = models.CharField(verbose_name=_("stage"), max_length=16,
                             help_text=_("check: refused before SQL; database: the write failed"))
    occurred_at = models.DateTimeField(verbose_name=_("occurred at"), help_text=_("When the buffer accepted it"))
    quarantined_at = models.DateTimeField(verbose_name=_("quarantined at"), auto_now_add=True, db_index=True)
    consumer = models.CharField(verbose_name=_("consumer"), max_length=191, blank=True)

    class Meta:
        verbose_name = _("quarantined event")
        verbose_name_plural = _("quarantined events")
        ordering = ["-id"]

    def __str__(self):
        return gettext("entry %(id)s: %(error)s") % {"id": self.stream_id, "error": self.error[:60]}
