from django.apps import AppConfig


class WechatConfig(AppConfig):
    name = "wechat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from news.signals import news_published
        from wechat.receivers import wechat_news_published

        news_published.connect(wechat_news_published, dispatch_uid="wechat.news_published")
