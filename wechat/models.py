from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _


class ArticleState(models.TextChoices):
    PENDING = "pending", _("Waiting for its draft")
    DRAFTED = "drafted", _("Draft created")
    SUBMITTING = "submitting", _("Submit in flight")
    PUBLISHING = "publishing", _("Accepted, WeChat is publishing")
    PUBLISHED = "published", _("Published")
    FAILED = "failed", _("Failed")
    # freepublish/submit got no answer (timeout, dropped reply, worker died mid-call). It is
    # not idempotent, so the publish records are searched before anything is submitted again.
    CHECKING = "checking", _("Submit outcome unknown: checking WeChat")
    # The search could not decide (quota used up, not found while WeChat holds the draft).
    UNKNOWN = "unknown", _("Submit outcome unknown: a person must check WeChat")


class WechatArticle(models.Model):
    """One news item's way to the WeChat Official Account: draft, submit, publish. Every
    stage records what WeChat returned before the next starts, so a job that runs again
    picks up where the last attempt stopped instead of uploading or submitting twice."""

    news = models.OneToOneField("news.News", verbose_name=_("news item"), on_delete=models.CASCADE,
                                related_name="wechat_article")
    state = models.CharField(verbose_name=_("state"), max_length=16, choices=ArticleState.choices,
                             default=ArticleState.PENDING)
    # An admin retry of a failed article starts a new generation: a new draft and a new marker.
    generation = models.PositiveIntegerField(verbose_name=_("generation"), default=1)
    thumb_media_id = models.CharField(verbose_name=_("cover media id"), max_length=128, blank=True,
                                      help_text=_("Permanent material: the cover"))
    # Source URL of each content image -> its mmbiz.qpic.cn URL, so a retry re-uploads nothing.
    content_images = models.JSONField(verbose_name=_("content images"), default=dict, blank=True)
    # Hidden in the draft's content, so draft/batchget and freepublish/batchget can tell our
    # draft and its publication from any other when an answer was lost.
    draft_marker = models.CharField(verbose_name=_("draft marker"), max_length=64, blank=True)
    draft_requested_at = models.DateTimeField(verbose_name=_("draft requested at"), 
        null=True, blank=True, help_text=_("draft/add sent and its answer not yet recorded: look before creating"))
    draft_media_id = models.CharField(verbose_name=_("draft media id"), max_length=128, blank=True)
    publish_id = models.CharField(verbose_name=_("publish id"), max_length=64, blank=True, db_index=True)
    article_id = models.CharField(verbose_name=_("article id"), max_length=128, blank=True)
    article_url = models.URLField(verbose_name=_("article url"), max_length=1024, blank=True)
    publish_status = models.SmallIntegerField(verbose_name=_("publish status"), null=True, blank=True,
                                              help_text=_("freepublish/get publish_status"))
    polls = models.PositiveIntegerField(verbose_name=_("polls"), default=0,
                                        help_text=_("freepublish/get calls made for this article"))
    reconcile_checks = models.PositiveIntegerField(verbose_name=_("reconcile checks"), 
        default=0, help_text=_("searches of the publish records after a submit with no answer"))
    rate_limit_waits = models.PositiveIntegerField(verbose_name=_("rate limit waits"), default=0)
    # WECHAT_PUBLISH_MAX_WAIT counts from here (the submit, or a person's "check WeChat again").
    waiting_since = models.DateTimeField(verbose_name=_("waiting for WeChat since"), null=True, blank=True)
    # New drafts made because WeChat no longer had the submitted one (40007): at most one.
    redrafts = models.PositiveSmallIntegerField(verbose_name=_("new drafts"), default=0)
    last_error = models.TextField(verbose_name=_("last error"), blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(verbose_name=_("updated at"), auto_now=True)
    drafted_at = models.DateTimeField(verbose_name=_("drafted at"), null=True, blank=True)
    submitted_at = models.DateTimeField(verbose_name=_("submitted at"), null=True, blank=True)
    published_at = models.DateTimeField(verbose_name=_("published at"), null=True, blank=True)

    class Meta:
        verbose_name = _("WeChat article")
        verbose_name_plural = _("WeChat articles")
        ordering = ["-id"]
        indexes = [models.Index(fields=["state", "updated_at"], name="wechat_state_updated_idx")]

    def __str__(self):
        return gettext("WeChat article of news %(id)s [%(state)s]") % {
            "id": self.news_id, "state": self.get_state_display()}


class ImageKind(models.TextChoices):
    THUMB = "thumb", _("Cover (permanent thumb material)")
    CONTENT = "content", _("In-article image (uploadimg)")


class WechatImage(models.Model):
    """An image already on WeChat, by the sha256 of its bytes: uploaded once, whichever
    article (or retry) needs it again. Permanent material counts against the account's limit."""

    kind = models.CharField(verbose_name=_("kind"), max_length=8, choices=ImageKind.choices)
    sha256 = models.CharField(verbose_name=_("sha256"), max_length=64)
    media_id = models.CharField(verbose_name=_("media id"), max_length=128, blank=True,
                                help_text=_("thumb: the permanent media_id"))
    url = models.URLField(verbose_name=_("url"), max_length=1024, blank=True,
                          help_text=_("content: the mmbiz.qpic.cn URL"))
    size = models.PositiveIntegerField(verbose_name=_("size"))
    filename = models.CharField(verbose_name=_("filename"), max_length=128, blank=True)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("WeChat image")
        verbose_name_plural = _("WeChat images")
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["kind", "sha256"], name="wechat_image_kind_sha256_uniq")]

    def __str__(self):
        return f"{self.kind} {self.sha256[:12]} -> {self.media_id or self.url}"
