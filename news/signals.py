"""Saving a News item keeps its jobs in step; the receivers only call the service.
QuerySet.update() bypasses these: the periodic sweeps (jobs/cron.py) catch what it misses."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from news.models import News
from news.services import news_cancel_jobs, news_sync_jobs


@receiver(post_save, sender=News, dispatch_uid="news_sync_jobs")
def news_saved(sender, instance: News, raw=False, **kwargs):
    if raw:  # loaddata
        return
    with transaction.atomic():
        news_sync_jobs(news_id=instance.pk, status=instance.status, scheduled_at=instance.scheduled_at,
                       expires_at=instance.expires_at)


@receiver(post_delete, sender=News, dispatch_uid="news_cancel_jobs")
def news_deleted(sender, instance: News, **kwargs):
    news_cancel_jobs(news_id=instance.pk)
