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
from nextevent.redis_sentinel import sentinel_config

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
    # Serves STATIC_ROOT (filled by `collectstatic`) from gunicorn itself (issue 14).
    "whitenoise.middleware.WhiteNoiseMiddleware",
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
STATIC_ROOT = env.str("STATIC_ROOT", str(BASE_DIR / "var" / "static"))

# --- Production web server (issue 14, deploy/) ---
# Behind a TLS-terminating proxy. gunicorn takes the scheme from X-Forwarded-Proto only on
# connections from its forwarded_allow_ips (deploy/gunicorn.conf.py), so Django needs no
# SECURE_PROXY_SSL_HEADER, which would trust that header from anyone who reaches gunicorn.
DJANGO_HTTPS = env.bool("DJANGO_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = DJANGO_HTTPS
# Probes and scrapers talk plain HTTP to gunicorn on the host itself.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", 0, min_value=0)

# Request bodies: the analytics endpoint takes batches of up to 1,000 events.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", 5 * 1024 * 1024, min_value=1024)

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- Redis: one set of connection keywords for every client in the project ---
REDIS = redis_config(env, embedded=EMBEDDED)
# Sentinels that name the master (REDIS_SENTINELS); None: REDIS's host and port (issue 14).
REDIS_SENTINEL = None if EMBEDDED else sentinel_config(env)

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
    # Same as django-q2's Redis broker, but connected through nextevent.redis_sentinel, so it
    # follows REDIS_SENTINELS and REDIS_TLS like every other client.
    "broker_class": "jobs.brokers.ProjectRedisBroker",
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

# --- WeChat Official Account (wechat/) ---
# Credentials come only from the environment and are never logged. Without WECHAT_APP_ID the
# WeChat jobs fail permanently with a message naming the variable (news publishing goes on).
WECHAT_APP_ID = env.str("WECHAT_APP_ID", "")
WECHAT_APP_SECRET = env.str("WECHAT_APP_SECRET", "")
# The host root: the client appends /cgi-bin/<api>. The fake: http://127.0.0.1:8765
WECHAT_API_BASE_URL = env.str("WECHAT_API_BASE_URL", "https://api.weixin.qq.com")
WECHAT_CONNECT_TIMEOUT = env.float("WECHAT_CONNECT_TIMEOUT", 5, min_value=0.1)
WECHAT_READ_TIMEOUT = env.float("WECHAT_READ_TIMEOUT", 30, min_value=0.1)
# The "Token" of the account's server settings: signs the callback URL's requests.
WECHAT_TOKEN = env.str("WECHAT_TOKEN", "")
# Off: stop at the draft (unverified subscription accounts cannot use freepublish: 48001).
WECHAT_AUTO_PUBLISH = env.bool("WECHAT_AUTO_PUBLISH", True)
# Permanent media id used as the cover when a news item has none; unset, the cover shipped in
# wechat/assets/default-thumb.jpg is uploaded once and its media_id remembered.
WECHAT_DEFAULT_THUMB_MEDIA_ID = env.str("WECHAT_DEFAULT_THUMB_MEDIA_ID", "")
# Sources disagree on the limits (docs: title 32 chars, author 16, digest 128); checked before
# any upload so a refused draft wastes no quota.
WECHAT_TITLE_MAX_CHARS = env.int("WECHAT_TITLE_MAX_CHARS", 32, min_value=1)
WECHAT_AUTHOR_MAX_CHARS = env.int("WECHAT_AUTHOR_MAX_CHARS", 16, min_value=1)
WECHAT_DIGEST_MAX_CHARS = env.int("WECHAT_DIGEST_MAX_CHARS", 128, min_value=1)
WECHAT_CONTENT_MAX_CHARS = env.int("WECHAT_CONTENT_MAX_CHARS", 20000, min_value=1)
# Images in an item's content are downloaded and re-uploaded to WeChat: only over http(s), at
# most this size, only from these hosts (empty: any; ".example.com" takes its subdomains), and
# never from private, loopback or link-local addresses unless allowed (the tests' fake is on
# 127.0.0.1).
WECHAT_IMAGE_MAX_BYTES = env.int("WECHAT_IMAGE_MAX_BYTES", 1_000_000, min_value=1024)
WECHAT_IMAGE_HOSTS = env.list("WECHAT_IMAGE_HOSTS", [])
WECHAT_IMAGE_ALLOW_PRIVATE = env.bool("WECHAT_IMAGE_ALLOW_PRIVATE", False)
# freepublish/get costs one of 100 calls a day: the PUBLISHJOBFINISH push is the main path,
# polling (doubling from FIRST up to MAX_INTERVAL, at most MAX_POLLS times) the fallback.
WECHAT_POLL_FIRST = env.float("WECHAT_POLL_FIRST", 60, min_value=0.1)
WECHAT_POLL_MAX_INTERVAL = env.float("WECHAT_POLL_MAX_INTERVAL", 1800, min_value=0.1)
WECHAT_MAX_POLLS = env.int("WECHAT_MAX_POLLS", 12, min_value=1)
# freepublish/get calls a day across all workers (WeChat allows 100): past it, polling waits for
# the next day (the push still settles publications), leaving the rest for people and tools.
WECHAT_POLLS_PER_DAY = env.int("WECHAT_POLLS_PER_DAY", 80, min_value=1)
# After a draft/add or freepublish/submit that got no answer, the draft box / publish records
# are searched, newest first, this many pages of 20 before concluding "not there".
WECHAT_SEARCH_PAGES = env.int("WECHAT_SEARCH_PAGES", 3, min_value=1, max_value=50)
# A submit with no answer is looked for in freepublish/batchget only this long after it was
# sent (longer than WECHAT_READ_TIMEOUT, so the call itself is over), then again with doubling
# waits while WeChat still holds the draft, at most MAX_CHECKS times before asking a person.
WECHAT_RECONCILE_DELAY = env.float("WECHAT_RECONCILE_DELAY", 60, min_value=0.1)
WECHAT_RECONCILE_MAX_CHECKS = env.int("WECHAT_RECONCILE_MAX_CHECKS", 6, min_value=1)
# Waits for WeChat's rate limits (45011, 53501) do not spend retries; this bounds them.
WECHAT_RATE_LIMIT_WAIT = env.float("WECHAT_RATE_LIMIT_WAIT", 60, min_value=0.1)
WECHAT_MAX_RATE_LIMIT_WAITS = env.int("WECHAT_MAX_RATE_LIMIT_WAITS", 10, min_value=1)
# urllib3 logs request URLs at DEBUG, and WeChat puts the access token in the query string.
LOGGING["loggers"]["urllib3"] = {"level": "INFO"}

# --- Operations (issue 7): /healthz, /readyz, /metrics, alerts (jobs/monitoring*) ---
# Where alerts go (dead jobs, old pending jobs). It often embeds a token: never logged in full.
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", "")
if ALERT_WEBHOOK_URL and not ALERT_WEBHOOK_URL.startswith(("http://", "https://")):
    raise ConfigError("ALERT_WEBHOOK_URL must start with http:// or https://")
ALERT_WEBHOOK_TIMEOUT = env.float("ALERT_WEBHOOK_TIMEOUT", 5, min_value=0.1)
# One alert per condition (e.g. "dead jobs on news") per this many minutes, across processes.
ALERT_REPEAT_MINUTES = env.int("ALERT_REPEAT_MINUTES", 30, min_value=1)
# Bearer token for /metrics and for /readyz's details. Empty: /metrics is open (restrict it
# at the proxy) and /readyz details are shown to staff sessions only.
METRICS_TOKEN = env.str("METRICS_TOKEN", "")
# A scrape runs a few bounded ledger queries; repeated requests within this reuse the answer.
METRICS_CACHE_SECONDS = env.float("METRICS_CACHE_SECONDS", 2, min_value=0)
READYZ_HEARTBEAT_MAX_AGE = env.int("READYZ_HEARTBEAT_MAX_AGE", 90, min_value=1)
READYZ_MAX_DEAD_JOBS = env.int("READYZ_MAX_DEAD_JOBS", 100, min_value=0)

# --- Analytics (analytics/) ---
# Events go to a Redis Stream; `news:analytics` jobs (every 5 minutes, and as soon as the
# buffer holds ANALYTICS_BATCH_THRESHOLD events) count them into MariaDB in chunks.
ANALYTICS_BATCH_THRESHOLD = env.int("ANALYTICS_BATCH_THRESHOLD", 10_000, min_value=1)
# Ingest checks the buffer's length once per this many events recorded by the process.
ANALYTICS_LENGTH_CHECK_EVERY = env.int("ANALYTICS_LENGTH_CHECK_EVERY", 100, min_value=1)
ANALYTICS_BATCH_CHUNK = env.int("ANALYTICS_BATCH_CHUNK", 5_000, min_value=1, max_value=50_000)
# One run stops after this many events or seconds (the job's timeout is 300 s) and, if the
# buffer is not empty, enqueues the next run.
ANALYTICS_BATCH_MAX_EVENTS = env.int("ANALYTICS_BATCH_MAX_EVENTS", 1_000_000, min_value=1)
ANALYTICS_BATCH_MAX_SECONDS = env.float("ANALYTICS_BATCH_MAX_SECONDS", 120, min_value=1)
# Events read by a batch that died (SIGKILL, lost host) are taken over by the next run once
# they have been idle this long. Must exceed the time one chunk takes to commit.
ANALYTICS_CLAIM_IDLE_SECONDS = env.float("ANALYTICS_CLAIM_IDLE_SECONDS", 30, min_value=0)
ANALYTICS_RAW_RETENTION_DAYS = env.int("ANALYTICS_RAW_RETENTION_DAYS", 30, min_value=1)
# Replicas that must hold an event before ingest answers (Redis WAIT, issue 14). 0: answer
# once the master has it; a failover can then lose the events not yet replicated.
ANALYTICS_WAIT_REPLICAS = env.int("ANALYTICS_WAIT_REPLICAS", 0, min_value=0, max_value=16)
ANALYTICS_WAIT_TIMEOUT_MS = env.int("ANALYTICS_WAIT_TIMEOUT_MS", 100, min_value=1)
ANALYTICS_HTTP_MAX_BYTES = env.int("ANALYTICS_HTTP_MAX_BYTES", 1024 * 1024, min_value=1024)
