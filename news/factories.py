"""factory-boy factories for tests, benchmarks and demo data."""

from datetime import timedelta

import factory
from django.utils import timezone

from news.models import News, NewsStatus


class NewsFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = News

    title = factory.Sequence(lambda n: f"News item {n}")
    content = factory.LazyAttribute(lambda o: f"<p>Body of {o.title}.</p>")
    author = "Desk"
    digest = ""
    status = NewsStatus.DRAFT


class ScheduledNewsFactory(NewsFactory):
    status = NewsStatus.SCHEDULED
    scheduled_at = factory.LazyFunction(lambda: timezone.now() + timedelta(hours=1))


class PublishedNewsFactory(NewsFactory):
    status = NewsStatus.PUBLISHED
    published_at = factory.LazyFunction(timezone.now)
