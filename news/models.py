from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy


class NewsStatus(models.TextChoices):
    DRAFT = "draft", pgettext_lazy("news status", "Draft")
    SCHEDULED = "scheduled", pgettext_lazy("news status", "Scheduled")
    PUBLISHED = "published", pgettext_lazy("news status", "Published")
    ARCHIVED = "archived", pgettext_lazy("news status", "Archived")


class News(models.Model):
    title = models.CharField(verbose_name=_("title"), max_length=255)
    content = models.TextField(verbose_name=_("content"), help_text=_("HTML"))
    author = models.CharField(verbose_name=_("author"), max_length=64, blank=True)
    digest = models.CharField(verbose_name=_("digest"), max_length=255, blank=True)
    cover_image = models.FileField(verbose_name=_("cover image"), upload_to="covers/", blank=True)
    status = models.CharField(verbose_name=_("status"), max_length=16, choices=NewsStatus.choices,
                              default=NewsStatus.DRAFT)
    scheduled_at = models.DateTimeField(verbose_name=_("scheduled at"), null=True, blank=True)
    published_at = models.DateTimeField(verbose_name=_("published at"), null=True, blank=True)
    expires_at = models.DateTimeField(verbose_name=_("expires at"), null=True, blank=True)
    archived_at = models.DateTimeField(verbose_name=_("archived at"), null=True, blank=True)
    push_to_wechat = models.BooleanField(verbose_name=_("push to WeChat"), default=False,
                                         help_text=_("Also publish to the WeChat Official Account"))
    # Running totals, maintained by the analytics batch job.
    view_count = models.BigIntegerField(verbose_name=_("view count"), default=0)
    share_count = models.BigIntegerField(verbose_name=_("share count"), default=0)
    like_count = models.BigIntegerField(verbose_name=_("like count"), default=0)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name=_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("news item")
        verbose_name_plural = _("news")
        ordering = ["-id"]
        indexes = [
            # The publish and archive sweeps filter on these.
            models.Index(fields=["status", "scheduled_at"], name="news_status_sched_idx"),
            models.Index(fields=["status", "expires_at"], name="news_status_expires_idx"),
        ]

    def __str__(self):
        return f"#{self.pk} {self.title}"
