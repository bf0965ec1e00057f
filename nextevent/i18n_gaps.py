"""Strings of Django's own admin that its zh-Hans catalogue leaves untranslated (Django 5.2):
named here so that `makemessages` (scripts/messages) puts them into ours, which Django reads
before the apps' catalogues (LOCALE_PATHS). Never imported; the browser test finds new gaps."""

from django.utils.translation import gettext_noop

DJANGO_ADMIN_GAPS = [
    gettext_noop("Model name"),  # the hidden heading of each app's table on the admin index
]
