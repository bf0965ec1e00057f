"""Monitoring whose cost does not grow with the ledger: the per-minute roll-up
of finished jobs (JobStat, with its mark) and the change list's (state, id) and (queue, id)
indexes. Both indexes are built in one online ALTER on MariaDB (one pass over the table,
writes go on meanwhile): minutes on a ledger of ten million rows, not two rebuilds."""

from django.db import migrations, models

STATE_ID = models.Index(fields=["state", "id"], name="job_state_id_idx")
QUEUE_ID = models.Index(fields=["queue", "id"], name="job_queue_id_idx")


def add_indexes(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    if schema_editor.connection.vendor == "mysql":
        schema_editor.execute("ALTER TABLE jobs_job ADD INDEX job_state_id_idx (state, id), "
                              "ADD INDEX job_queue_id_idx (queue, id), ALGORITHM=INPLACE, LOCK=NONE")
    else:
        schema_editor.add_index(Job, STATE_ID)
        schema_editor.add_index(Job, QUEUE_ID)


def drop_indexes(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    schema_editor.remove_index(Job, STATE_ID)
    schema_editor.remove_index(Job, QUEUE_ID)


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0002_subject_waiting_reason'),
    ]

    operations = [
        migrations.CreateModel(
            name='JobStat',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('minute', models.DateTimeField(help_text='Start of the minute the jobs finished in')),
                ('queue', models.CharField(max_length=32)),
                ('job_type', models.CharField(max_length=64)),
                ('state', models.CharField(choices=[('scheduled', 'Scheduled'), ('pending', 'Pending'), ('active', 'Active'), ('retry', 'Retry'), ('dead', 'Dead'), ('completed', 'Completed'), ('cancelled', 'Cancelled')], max_length=16)),
                ('count', models.PositiveIntegerField(default=0)),
                ('timed', models.PositiveIntegerField(default=0, help_text='Of which started (duration and lateness known)')),
                ('duration_sum', models.FloatField(default=0.0)),
                ('lateness_sum', models.FloatField(default=0.0)),
                ('duration_buckets', models.JSONField(blank=True, default=list)),
                ('lateness_buckets', models.JSONField(blank=True, default=list)),
            ],
        ),
        migrations.CreateModel(
            name='JobStatMark',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=32, unique=True)),
                ('through', models.DateTimeField()),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AddIndex(model_name="job", index=STATE_ID),
                              migrations.AddIndex(model_name="job", index=QUEUE_ID)],
            database_operations=[migrations.RunPython(add_indexes, drop_indexes)],
        ),
        migrations.AddConstraint(
            model_name='jobstat',
            constraint=models.UniqueConstraint(fields=('minute', 'queue', 'job_type', 'state'), name='jobstat_minute_key'),
        ),
    ]
