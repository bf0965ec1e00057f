"""Loaded with `-p tests.testenv` before Django is set up: test defaults for the
environment, shared with every qcluster subprocess a test starts. Explicit variables win."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production")
os.environ.setdefault("REDIS_DB", "15")  # keep tests off a developer's queues in db 0
os.environ.setdefault("LOG_FORMAT", "plain")
os.environ.setdefault("JOBS_SHUTDOWN_GRACE", "10")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
