from django.db import models


class ArticleState(models.TextChoices):
    PENDING = "pending", "Waiting for its draft"
    DRAFTED = "drafted", "Draft created"
    SUBMITTING = "submitting", "Submit in flight"
    PUBLISHING = "publishing", "Accepted, WeChat is publishing"
    PUBLISHED = "published", "Published"
    FAILED = "failed", "Failed"
    # freepublish/submit may or may not have been accepted (timeout, crash mid-call). It is not
    # idempotent, so nothing submits again until a person has looked at the account.
    UNKNOWN = "unknown", "Submit outcome unknown: check WeChat"


class WechatArticle(models.Model):
    """One news item's way to the WeChat Official Account: draft, submit, publish. Every
    stage records what WeChat returned before the next starts, so a job that runs again
    picks up where the last attempt stopped instead of uploading or submitting twice."""

    news = models.OneToOneField("news.News", on_delete=models.CASCADE, related_name="wechat_article")
    state = models.CharField(max_length=16, choices=ArticleState.choices, default=ArticleState.PENDING)
    thumb_media_id = models.CharField(max_length=128, blank=True, help_text="Permanent material: the cover")
    # Source URL of each content image -> its mmbiz.qpic.cn URL, so a retry re-uploads nothing.
    content_images = models.JSONField(default=dict, blank=True)
    draft_media_id = models.CharField(max_length=128, blank=True)
    publish_id = models.CharField(max_length=64, blank=True, db_index=True)
    article_id = models.CharField(max_length=128, blank=True)
    article_url = models.URLField(max_length=1024, blank=True)
    publish_status = models.SmallIntegerField(null=True, blank=True, help_text="freepublish/get publish_status")
    polls = models.PositiveIntegerField(default=0, help_text="freepublish/get calls made for this article")
    rate_limit_waits = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    drafted_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["state", "updated_at"], name="wechat_state_updated_idx")]

    def __str__(self):
        return f"WeChat article of news {self.news_id} [{self.state}]"
