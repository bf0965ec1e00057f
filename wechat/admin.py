from django.contrib import admin, messages

from wechat.models import ArticleState, WechatArticle
from wechat.services import wechat_resolve_unknown, wechat_retry


@admin.register(WechatArticle)
class WechatArticleAdmin(admin.ModelAdmin):
    list_display = ("id", "news", "state", "draft_media_id", "publish_id", "article_url", "polls", "updated_at")
    list_filter = ("state",)
    search_fields = ("=news__id", "news__title", "=publish_id", "=draft_media_id")
    list_select_related = ("news",)
    actions = ["retry", "resolve_published", "resolve_not_published"]

    def get_readonly_fields(self, request, obj=None):
        # State moves only through the services; editing it by hand would skip their checks.
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Retry (a failed one starts over with a new draft)")
    def retry(self, request, queryset):
        for article in queryset:
            self.message_user(request, wechat_retry(news_id=article.news_id))

    @admin.action(description="Unknown submit outcome: it WAS published (checked in WeChat)")
    def resolve_published(self, request, queryset):
        self._resolve(request, queryset, published=True)

    @admin.action(description="Unknown submit outcome: it was NOT published, submit again")
    def resolve_not_published(self, request, queryset):
        self._resolve(request, queryset, published=False)

    def _resolve(self, request, queryset, *, published):
        done = [a.news_id for a in queryset if wechat_resolve_unknown(news_id=a.news_id, published=published)]
        skipped = queryset.exclude(news_id__in=done).count()
        self.message_user(request, f"{len(done)} resolved" + (
            f"; {skipped} skipped (not in state {ArticleState.UNKNOWN})" if skipped else ""),
            messages.WARNING if skipped else messages.SUCCESS)
