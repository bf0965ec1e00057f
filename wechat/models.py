from django.db import models


class ArticleState(models.TextChoices):
    PENDING = "pending", "Waiting for its draft"
    DRAFTED = "drafted", "Draft created"
    SUBMITTING = "submitting", "Submit in flight"
    PUBLISHING = "publishing", "Accepted, WeChat is publishing"
    PUBLISHED = "published", "Published"
    FAILED = "failed", "Failed"
    # freepublish/submit got no answer (timeout, dropped reply, worker died mid-call). It is
    # not idempotent, so the publish records are searched before anything is submitted again.
    CHECKING = "checking", "Submit outcome unknown: checking WeChat"
    # The search could not decide (quota used up, not found while WeChat holds the draft).
    UNKNOWN = "unknown", "Submit outcome unknown: a person must check WeChat"


class WechatArticle(models.Model):
    """One news item's way to the WeChat Official Account: draft, submit, publish. Every
    stage records what WeChat returned before the next starts, so a job that runs again
    picks up where the last attempt stopped instead of uploading or submitting twice."""

    news = models.OneToOneField("news.News", on_delete=models.CASCADE, related_name="wechat_article")
    state = models.CharField(max_length=16, choices=ArticleState.choices, default=ArticleState.PENDING)
    # An admin retry of a failed article starts a new generation: a new draft and a new marker.
    generation = models.PositiveIntegerField(default=1)
    thumb_media_id = models.CharField(max_length=128, blank=True, help_text="Permanent material: the cover")
    # Source URL of each content image -> its mmbiz.qpic.cn URL, so a retry re-uploads nothing.
    content_images = models.JSONField(default=dict, blank=True)
    # Hidden in the draft's content, so draft/batchget and freepublish/batchget can tell our
    # draft and its publication from any other when an answer was lost.
    draft_marker = models.CharField(max_length=64, blank=True)
    draft_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="draft/add sent and its answer not yet recorded: look before creating")
    draft_media_id = models.CharField(max_length=128, blank=True)
    publish_id = models.CharField(max_length=64, blank=True, db_index=True)
    article_id = models.CharField(max_length=128, blank=True)
    article_url = models.URLField(max_length=1024, blank=True)
    publish_status = models.SmallIntegerField(null=True, blank=True, help_text="freepublish/get publish_status")
    polls = models.PositiveIntegerField(default=0, help_text="freepublish/get calls made for this article")
    reconcile_checks = models.PositiveIntegerField(
        default=0, help_text="searches of the publish records after a submit with no answer")
    rate_limit_waits = models.PositiveIntegerField(default=0)
    # WECHAT_PUBLISH_MAX_WAIT counts from here (the submit, or a person's "check WeChat again").
    waiting_since = models.DateTimeField(null=True, blank=True)
    # New drafts made because WeChat no longer had the submitted one (40007): at most one.
    redrafts = models.PositiveSmallIntegerField(default=0)
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


class ImageKind(models.TextChoices):
    THUMB = "thumb", "Cover (permanent thumb material)"
    CONTENT = "content", "In-article image (uploadimg)"


class WechatImage(models.Model):
    """An image already on WeChat, by the sha256 of its bytes: uploaded once, whichever
    article (or retry) needs it again. Permanent material counts against the account's limit."""

    kind = models.CharField(max_length=8, choices=ImageKind.choices)
    sha256 = models.CharField(max_length=64)
    media_id = models.CharField(max_length=128, blank=True, help_text="thumb: the permanent media_id")
    url = models.URLField(max_length=1024, blank=True, help_text="content: the mmbiz.qpic.cn URL")
    size = models.PositiveIntegerField()
    filename = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["kind", "sha256"], name="wechat_image_kind_sha256_uniq")]

    def __str__(self):
        return f"{self.kind} {self.sha256[:12]} -> {self.media_id or self.url}"
