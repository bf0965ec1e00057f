"""Replaces django-q2's qcluster: runs every queue's cluster plus the engine's dispatcher.

    python manage.py qcluster                      # all five queues + dispatcher
    Q_CLUSTER_NAME=news python manage.py qcluster  # one queue's cluster (+ dispatcher)
    python manage.py qcluster --queues news,wechat --no-dispatcher
"""

import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, no_translations

from jobs.supervisor import Supervisor, check_services


class Command(BaseCommand):
    help = "Run the job engine: a django-q2 cluster per queue and the dispatcher."

    def add_arguments(self, parser):
        parser.add_argument("--queues", help="comma-separated queues to run (default: all, or Q_CLUSTER_NAME)")
        parser.add_argument("--no-dispatcher", action="store_true",
                            help="do not run the dispatcher here (run at least one somewhere)")
        parser.add_argument("--grace", type=float, default=None,
                            help=f"seconds running jobs get to finish on SIGTERM (default JOBS_SHUTDOWN_GRACE="
                                 f"{settings.JOBS_SHUTDOWN_GRACE})")
        parser.add_argument("--no-sync-schedules", action="store_true",
                            help="do not create/update the periodic table's Schedule rows at start")

    @no_translations  # workers, their logs and this output stay English whatever LANGUAGE_CODE says
    def handle(self, *args, **options):
        settings.SECRET_KEY  # django-q2 signs with it
        known = list(settings.JOBS_QUEUES)
        raw = options["queues"] or os.environ.get("Q_CLUSTER_NAME") or ",".join(known)
        queues = [q.strip() for q in raw.split(",") if q.strip()]
        unknown = [q for q in queues if q not in known]
        if unknown:
            raise CommandError(f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(known)}")
        problem = check_services()
        if problem:
            self.stderr.write(f"qcluster: {problem}")
            sys.exit(2)
        if not options["no_sync_schedules"]:
            from jobs.periodic import sync_periodic_table

            sync_periodic_table()
        sys.exit(Supervisor(queues, dispatcher=not options["no_dispatcher"], grace=options["grace"]).run())
