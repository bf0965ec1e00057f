"""Saving a News item keeps its jobs in step; the receivers only call the scheduling code.

Under Django's autocommit a bare `news.save()` commits the row before post_save runs, so the
jobs are written in a second transaction: a crash between the two leaves a scheduled item
without its job until the minute sweep (news_publish_sweep) gives it one; an item's expiry
is caught by the hourly archive sweep. Callers that save through news.services.news_save (and
the admin, which wraps each save in a transaction) get the row and its jobs in one
transaction. QuerySet.update() bypasses these receivers: the sweeps catch what it misses."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from news.models import News
from news.scheduling import news_cancel_jobs, news_sync_jobs


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
