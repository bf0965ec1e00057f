"""Bring the periodic table's django-q2 Schedule rows in step with the periodic tasks
declared in the apps (@jobs.registry.periodic).

    python manage.py sync_periodic           # what qcluster does at start: timings kept
    python manage.py sync_periodic --reset   # also put the code's timings back

qcluster keeps a timing an admin changed; after changing a declared timing (or
to undo an admin's change), run this with --reset once.
"""

from django.core.management.base import BaseCommand, no_translations
from django.utils import timezone
from django_q.models import Schedule

from jobs.periodic import sync_periodic_table
from jobs.registry import periodic_table


class Command(BaseCommand):
    help = "Create/update the periodic table's Schedule rows; --reset also restores the code's timings."

    def add_arguments(self, parser):
        parser.add_argument("--reset", action="store_true",
                            help="put each row's timing (cron, next run, repeats) back to the code's")

    @no_translations  # the CLI stays English whatever LANGUAGE_CODE says
    def handle(self, *args, **options):
        changes = sync_periodic_table(reset=options["reset"])
        for line in changes:
            self.stdout.write(line)
        if not changes:
            self.stdout.write("periodic table already in step")
        table = periodic_table()
        rows = {s.name: s for s in Schedule.objects.filter(name__in=[e.name for e in table])}
        for entry in table:
            row = rows.get(entry.name)
            timing = row.cron if row and row.schedule_type == Schedule.CRON else (
                row.get_schedule_type_display() if row else "?")
            changed = "" if timing == entry.cron else f"  (code: {entry.cron})"
            next_run = timezone.localtime(row.next_run).isoformat() if row and row.next_run else "-"
            self.stdout.write(f"{entry.name:<20} {timing:<16} {entry.queue:<10} next {next_run}{changed}")
