from django.db import models


class NewsStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    PUBLISHED = "published", "Published"
    ARCHIVED = "archived", "Archived"


class News(models.Model):
    title = models.CharField(max_length=255)
    content = models.TextField(help_text="HTML")
    author = models.CharField(max_length=64, blank=True)
    digest = models.CharField(max_length=255, blank=True)
    cover_image = models.FileField(upload_to="covers/", blank=True)
    status = models.CharField(max_length=16, choices=NewsStatus.choices, default=NewsStatus.DRAFT)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    push_to_wechat = models.BooleanField(default=False, help_text="Also publish to the WeChat Official Account")
    # Running totals, maintained by the analytics batch job.
    view_count = models.BigIntegerField(default=0)
    share_count = models.BigIntegerField(default=0)
    like_count = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "news"
        ordering = ["-id"]
        indexes = [
            # The publish and archive sweeps filter on these.
            models.Index(fields=["status", "scheduled_at"], name="news_status_sched_idx"),
            models.Index(fields=["status", "expires_at"], name="news_status_expires_idx"),
        ]

    def __str__(self):
        return f"#{self.pk} {self.title}"
