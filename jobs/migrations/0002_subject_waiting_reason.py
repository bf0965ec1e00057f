"""Job.news_id becomes the generic Job.subject ("news:42"); a snoozed job's reason moves out
of last_error into waiting_reason."""

from django.db import migrations, models
from django.db.models import CharField, Value
from django.db.models.functions import Cast, Concat


def news_id_to_subject(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    Job.objects.filter(news_id__isnull=False).update(
        subject=Concat(Value("news:"), Cast("news_id", CharField())))


def subject_to_news_id(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    for pk, subject in Job.objects.filter(subject__startswith="news:").values_list("pk", "subject").iterator():
        tail = subject.split(":", 1)[1]
        if tail.isdigit():
            Job.objects.filter(pk=pk).update(news_id=int(tail))


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="job", name="subject",
            field=models.CharField(blank=True, db_index=True, default="", max_length=64),
        ),
        migrations.AddField(
            model_name="job", name="waiting_reason",
            field=models.TextField(blank=True, help_text="Why a healthy job is waiting (snoozed), not an error"),
        ),
        migrations.RunPython(news_id_to_subject, subject_to_news_id),
        migrations.RemoveField(model_name="job", name="news_id"),
        migrations.AlterField(
            model_name="job", name="last_error",
            field=models.TextField(blank=True, help_text="The last failed attempt's error; errors only"),
        ),
    ]
