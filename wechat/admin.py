from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _
from django.utils.translation import gettext, ngettext

from news.models import News
from wechat.models import ArticleState, WechatArticle, WechatImage
from wechat.services import wechat_resolve_unknown, wechat_retry

ARTICLE_FIELDS = ("state", "what_happens_now", "draft_media_id", "publish_id", "article_id", "article_url",
                  "publish_status", "polls",
                  "reconcile_checks", "last_error", "drafted_at", "submitted_at", "published_at")


# For a person: what each state means and what, if anything, they must do. The article's
# last_error beside it is WeChat's (or the service's) own text, kept as it was recorded.
STATE_EXPLANATIONS = {
    ArticleState.PENDING: _("Waiting for its draft to be created in the WeChat draft box."),
    ArticleState.DRAFTED: _("The draft is in the WeChat draft box; publishing is queued."),
    ArticleState.SUBMITTING: _("The publish request is being sent to WeChat."),
    ArticleState.PUBLISHING: _("WeChat accepted the publish request and is publishing; its result is awaited."),
    ArticleState.PUBLISHED: _("Published on the WeChat Official Account."),
    ArticleState.FAILED: _("Publishing failed. Correct the news item if needed, then use “Retry”: it starts over "
                           "with a new draft."),
    ArticleState.CHECKING: _("WeChat did not answer the publish request, so its outcome is unknown. WeChat's "
                             "publish records are being searched before anything is submitted again; nothing to "
                             "do yet."),
    ArticleState.UNKNOWN: _("Needs a person: the search could not tell whether the article was published. Check "
                            "the Official Account's publish records in WeChat, then choose “it WAS published”, "
                            "“it was NOT published” or “search again” from the actions."),
}


def state_explanation(state: str) -> str:
    return STATE_EXPLANATIONS.get(state, "")


@admin.register(WechatArticle)
class WechatArticleAdmin(admin.ModelAdmin):
    list_display = ("id", "news", "state", "what_happens_now", "draft_media_id", "publish_id", "article_url", "polls",
                    "updated_at")
    list_filter = ("state",)
    search_fields = ("=news__id", "news__title", "=publish_id", "=draft_media_id", "=article_id")
    list_select_related = ("news",)
    # Each action starts WeChat calls (a submit publishes): change permission, checked by
    # the admin both when offering the action and when running it.
    actions = ["retry", "resolve_published", "resolve_not_published", "resolve_check_again"]

    def get_readonly_fields(self, request, obj=None):
        # State moves only through the services; editing it by hand would skip their checks.
        return ["what_happens_now", *(f.name for f in self.model._meta.fields)]

    @admin.display(description=_("what happens now"))
    def what_happens_now(self, obj):
        return state_explanation(obj.state)

    def has_add_permission(self, request):
        return False

    @admin.action(description=_("Retry (a failed one starts over with a new draft)"), permissions=["change"])
    def retry(self, request, queryset):
        for article in queryset:
            self.message_user(request, wechat_retry(news_id=article.news_id))

    @admin.action(description=_("Submit outcome unknown: it WAS published (checked in WeChat)"),
                  permissions=["change"])
    def resolve_published(self, request, queryset):
        self._resolve(request, queryset, published=True)

    @admin.action(description=_("Submit outcome unknown: it was NOT published, submit again"),
                  permissions=["change"])
    def resolve_not_published(self, request, queryset):
        self._resolve(request, queryset, published=False)

    @admin.action(description=_("Submit outcome unknown: search WeChat's publish records again"),
                  permissions=["change"])
    def resolve_check_again(self, request, queryset):
        self._resolve(request, queryset, published=None)

    def _resolve(self, request, queryset, *, published):
        done = [a.news_id for a in queryset if wechat_resolve_unknown(news_id=a.news_id, published=published)]
        skipped = queryset.exclude(news_id__in=done).count()
        text = ngettext("%(count)d article resolved.", "%(count)d articles resolved.", len(done)) % {"count": len(done)}
        if skipped:
            text += " " + ngettext("%(count)d skipped: not in state “%(state)s”.",
                                   "%(count)d skipped: not in state “%(state)s”.", skipped) % {
                "count": skipped, "state": ArticleState.UNKNOWN.label}
        self.message_user(request, text, messages.WARNING if skipped else messages.SUCCESS)


@admin.register(WechatImage)
class WechatImageAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "sha256", "media_id", "url", "size", "created_at")
    list_filter = ("kind",)
    search_fields = ("=sha256", "=media_id")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False


class WechatArticleInline(admin.StackedInline):
    """The item's WeChat life on its News page (read-only; the actions are on the WeChat page)."""

    @admin.display(description=_("what happens now"))
    def what_happens_now(self, obj):
        return state_explanation(obj.state)

    model = WechatArticle
    fields = readonly_fields = ARTICLE_FIELDS
    can_delete = False
    extra = 0
    verbose_name = verbose_name_plural = _("WeChat Official Account")

    def has_add_permission(self, request, obj=None):
        return False


# The news app does not know about WeChat: this app registers News's admin again, as a
# subclass of whatever is registered (Django's public get_model_admin), with its inline.
_news_admin = type(admin.site.get_model_admin(News))


class NewsWithWechatAdmin(_news_admin):
    inlines = [*_news_admin.inlines, WechatArticleInline]


admin.site.unregister(News)
admin.site.register(News, NewsWithWechatAdmin)
