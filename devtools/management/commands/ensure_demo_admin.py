"""Quick start only: make sure a superuser `admin` exists and print its password.

The password is random, kept in var/admin-password (mode 600) so reruns print the same one.
Refuses to run outside embedded mode: production admins are created with createsuperuser."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the quick start's admin user (embedded mode only) and print its password."

    def handle(self, *args, **options):
        if not settings.EMBEDDED:
            raise CommandError("ensure_demo_admin is for the embedded quick start only; use createsuperuser")
        path = settings.BASE_DIR / "var" / "admin-password"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(12))
            path.chmod(0o600)
        password = path.read_text().strip()
        User = get_user_model()
        user, _ = User.objects.get_or_create(username="admin", defaults={"email": "admin@example.com"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(password)
