"""Loaded with `-p tests.testenv` before Django is set up: test defaults for the
environment, shared with every qcluster subprocess a test starts. Explicit variables win."""

import os

# At least 50 characters: outside debug the settings refuse a weaker key.
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production-0123456789abcdef")
# The tests run in production mode over plain HTTP (test client, live server, browser).
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("DJANGO_SECURE_COOKIES", "0")
os.environ.setdefault("REDIS_DB", "15")  # keep tests off a developer's queues in db 0
os.environ.setdefault("LOG_FORMAT", "plain")
os.environ.setdefault("JOBS_SHUTDOWN_GRACE", "10")
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
