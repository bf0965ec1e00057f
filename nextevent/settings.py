"""Django settings. Every value that varies by deployment comes from nextevent.config."""

from __future__ import annotations

import secrets

from nextevent.config import (
    BASE_DIR,
    ConfigError,
    Env,
    database_config,
    embedded_enabled,
    read_dotenv,
    redis_config,
)

read_dotenv()
env = Env()

EMBEDDED = embedded_enabled(env)
DEBUG = env.bool("DJANGO_DEBUG", False)


def _secret_key() -> str:
    key = env.str("DJANGO_SECRET_KEY", "")
    if key:
        return key
    if EMBEDDED:
        # Every process must sign django-q2 payloads with the same key, so persist one.
        path = BASE_DIR / "var" / "secret_key"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            path.write_text(secrets.token_urlsafe(50))
            path.chmod(0o600)
        return path.read_text().strip()
    if DEBUG:
        return "insecure-debug-only-key-do-not-use-in-production"
    raise ConfigError("DJANGO_SECRET_KEY is required (unless DJANGO_DEBUG=1 or NEXTEVENT_EMBEDDED=1)")


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # jobs first: its `qcluster` command replaces django-q2's with the multi-queue supervisor.
    "jobs",
    "news",
    "wechat",
    "analytics",
    "django_q",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "nextevent.urls"
WSGI_APPLICATION = "nextevent.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": database_config(env, embedded=EMBEDDED)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", "Asia/Shanghai")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"

# Request bodies: the analytics endpoint takes batches of up to 1,000 events.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", 5 * 1024 * 1024, min_value=1024)

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- Redis: one set of connection keywords for every client in the project ---
REDIS = redis_config(env, embedded=EMBEDDED)

# --- Job engine (jobs/) ---
# Worker processes per queue. The seed's Asynq weights (critical 6, news 3, wechat 2,
# analytics 1, default 1) become dedicated worker counts: django-q2 has one queue per cluster.
_default_workers = {"critical": 6, "news": 3, "wechat": 2, "analytics": 1, "default": 1}
if EMBEDDED:
    _default_workers = dict.fromkeys(_default_workers, 1)
JOBS_QUEUES = {
    name: env.int(f"JOBS_WORKERS_{name.upper()}", count, min_value=1, max_value=64)
    for name, count in _default_workers.items()
}
JOBS_LEASE_SECONDS = env.int("JOBS_LEASE_SECONDS", 20, min_value=5)
JOBS_HEARTBEAT_SECONDS = env.float("JOBS_HEARTBEAT_SECONDS", 5, min_value=0.5)
JOBS_DISPATCH_INTERVAL = env.float("JOBS_DISPATCH_INTERVAL", 0.1, min_value=0.01)
JOBS_REPUSH_AFTER = env.int("JOBS_REPUSH_AFTER", 10, min_value=1)
JOBS_SHUTDOWN_GRACE = env.int("JOBS_SHUTDOWN_GRACE", 30, min_value=0)
JOBS_BACKOFF_BASE = env.float("JOBS_BACKOFF_BASE", 1.0, min_value=0)
JOBS_BACKOFF_CAP = env.float("JOBS_BACKOFF_CAP", 16.0, min_value=0)
JOBS_RETENTION_COMPLETED_DAYS = env.int("JOBS_RETENTION_COMPLETED_DAYS", 7, min_value=1)
JOBS_RETENTION_DEAD_DAYS = env.int("JOBS_RETENTION_DEAD_DAYS", 30, min_value=1)
JOBS_ALERT_PENDING_AGE = env.int("JOBS_ALERT_PENDING_AGE", 300, min_value=1)
JOBS_ALERT_DEAD_JOBS = env.int("JOBS_ALERT_DEAD_JOBS", 0, min_value=0)

Q_CLUSTER = {
    # The name is also django-q2's signing salt: it must be the same in every process.
    "name": "nextevent",
    "workers": 1,
    "redis": REDIS,
    # The engine's dispatcher drives Schedule rows every second; django-q2's own 30 s tick is off.
    "scheduler": False,
    "catch_up": False,
    # Each wake-up carries its job type's timeout; these are only fallbacks. `retry` acts on
    # brokers with receipts only (not Redis) and must exceed `timeout` to silence a warning.
    "timeout": 600,
    "retry": 3600,
    # The job ledger records every outcome; django-q2 keeps failures only.
    "save_limit": -1,
    "recycle": env.int("JOBS_WORKER_RECYCLE", 500, min_value=1),
    "max_rss": env.int("JOBS_WORKER_MAX_RSS_KB", 0, min_value=0) or None,
    "log_level": env.str("LOG_LEVEL", "INFO"),
    "ALT_CLUSTERS": {
        # A small prefetch: what a dead cluster held in memory is re-pushed from the ledger.
        name: {"workers": count, "queue_limit": count * 2}
        for name, count in JOBS_QUEUES.items()
    },
}

LOG_FORMAT = env.str("LOG_FORMAT", "plain" if DEBUG or EMBEDDED else "json")
if LOG_FORMAT not in ("plain", "json"):
    raise ConfigError(f"LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "nextevent.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
