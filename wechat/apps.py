from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WechatConfig(AppConfig):
    name = "wechat"
    verbose_name = _("WeChat")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from news.signals import news_published
        from wechat.receivers import wechat_news_published

        news_published.connect(wechat_news_published, dispatch_uid="wechat.news_published")
