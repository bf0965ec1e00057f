from django.apps import AppConfig


class WechatConfig(AppConfig):
    name = "wechat"
    default_auto_field = "django.db.models.BigAutoField"
