from django.apps import AppConfig


class WechatConfig(AppConfig):
    name = "wechat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from news.services import on_news_published
        from wechat.services import wechat_on_news_published

        on_news_published(wechat_on_news_published)
