from django.contrib import admin

from news.models import News


@admin.register(News)
class NewsAdmin(admin.ModelAdmin):
    list_display = ("id", "title", "status", "scheduled_at", "published_at", "expires_at", "push_to_wechat",
                    "view_count", "share_count", "like_count")
    list_filter = ("status", "push_to_wechat", "scheduled_at", "published_at")
    search_fields = ("title", "author", "=id")
    readonly_fields = ("published_at", "archived_at", "created_at", "updated_at", "view_count", "share_count",
                       "like_count")
