from django.urls import path

from wechat.views import wechat_callback

urlpatterns = [
    path("callback", wechat_callback, name="wechat_callback"),
]
