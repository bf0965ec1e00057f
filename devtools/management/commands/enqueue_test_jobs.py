"""Enqueue demo jobs of every type so the engine can be watched working.

    python manage.py enqueue_test_jobs                    # one of each type
    python manage.py enqueue_test_jobs --count 5          # five of each
    python manage.py enqueue_test_jobs --fail-times 2     # plus a job failing twice, then succeeding
    python manage.py enqueue_test_jobs --fail-times 9     # ...or failing until it is dead
"""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from analytics.ingest import enqueue_news_analytics
from analytics.scheduling import NEWS_ANALYTICS
from jobs import scheduler
from jobs.system import SYSTEM_NOOP
from wechat.scheduling import WECHAT_DRAFT_CREATION, WECHAT_PUBLISHING, schedule_wechat_draft_creation
from jobs.models import Job
from news.models import News, NewsStatus


class Command(BaseCommand):
    help = "Enqueue one demo job of each type (creating the news items they need) and print their ids."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=1, help="how many of each type (1-100)")
        parser.add_argument("--delay", type=float, default=10.0,
                            help="seconds until the demo news items are due to publish (default 10)")
        parser.add_argument("--fail-times", type=int, default=0,
                            help="also enqueue a job that fails this many times before succeeding "
                                 "(more than 3 makes it dead: see retries and the dead-letter state)")
        parser.add_argument("--permanent", action="store_true",
                            help="make the failing job fail permanently (dead at once)")

    def handle(self, *args, count, delay, fail_times, permanent, **options):
        if not 1 <= count <= 100:
            raise CommandError(f"--count must be from 1 to 100, got {count}")
        if fail_times < 0:
            raise CommandError(f"--fail-times must be >= 0, got {fail_times}")
        now = timezone.now()
        rows = []
        with transaction.atomic():
            for n in range(count):
                scheduled = News.objects.create(
                    title=f"Demo scheduled news {n + 1}", content="<p>Published by the job engine.</p>",
                    author="Demo", status=NewsStatus.SCHEDULED, scheduled_at=now + timedelta(seconds=delay),
                    expires_at=now + timedelta(seconds=delay + 60), push_to_wechat=True)
                rows.append(("news:scheduled_publisher + news:expiration (via the model-save signal)",
                             Job.objects.filter(subject=f"news:{scheduled.pk}").values_list("pk", flat=True)))
                wechat_news = News.objects.create(
                    title=f"Demo WeChat news {n + 1}", content="<p>Sent to WeChat.</p>", author="Demo",
                    status=NewsStatus.PUBLISHED, published_at=now, push_to_wechat=True)
                rows.append((f"{WECHAT_DRAFT_CREATION} (then {WECHAT_PUBLISHING})",
                             [schedule_wechat_draft_creation(wechat_news.pk)]))
                for event in ("view", "view", "share", "like"):
                    enqueue_news_analytics(wechat_news.pk, event, user_id=n + 1, metadata={"demo": True})
                rows.append((f"{NEWS_ANALYTICS} (4 events buffered first)",
                             [scheduler.enqueue(NEWS_ANALYTICS, {"reason": "demo"})]))
                rows.append((SYSTEM_NOOP, [scheduler.enqueue(SYSTEM_NOOP, {"marker": "demo"})]))
                if fail_times:
                    rows.append((f"{SYSTEM_NOOP} failing {fail_times}x{' (permanent)' if permanent else ''}",
                                 [scheduler.enqueue(SYSTEM_NOOP, {"fail_times": fail_times,
                                                                        "permanent": permanent})]))
        for label, ids in rows:
            self.stdout.write(f"{label}: job {', '.join(str(i) for i in ids)}")
        if not settings.WECHAT_APP_ID:
            self.stdout.write("note: WECHAT_APP_ID is not set, so the WeChat jobs will go dead with that reason "
                              "(run the fake: python manage.py fake_wechat)")
        self.stdout.write("watch them: python manage.py jobs list --limit 20   |   admin: /admin/jobs/job/")
