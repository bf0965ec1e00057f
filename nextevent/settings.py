"""Django settings. Every value that varies by deployment comes from nextevent.config."""

from __future__ import annotations

import re
import sys

from jobs.queues import DEFAULT_WORKERS
from nextevent.config import (
    BASE_DIR,
    ConfigError,
    Env,
    check_secret_key,
    database_config,
    database_timeouts,
    embedded_enabled,
    analytics_redis_config,
    generated_secret_key,
    process_role,
    proxy_ssl_header,
    meta_header_name,
    read_dotenv,
    redis_config,
    redis_socket_timeout,
)
from nextevent.redis_sentinel import sentinel_config

read_dotenv()
env = Env()

EMBEDDED = embedded_enabled(env)
DEBUG = env.bool("DJANGO_DEBUG", False)


# Production: neither debug nor embedded. Secure defaults below (HTTPS, HSTS, secure cookies,
# a strong key, closed /metrics) apply only there; each is still configurable.
PRODUCTION = not DEBUG and not EMBEDDED


def _secret_key() -> str:
    key = env.str("DJANGO_SECRET_KEY", "")
    if key:
        if PRODUCTION:
            check_secret_key(key)
        return key
    if EMBEDDED or DEBUG:
        # Never a constant: a key known to others lets anyone who can write to Redis sign a
        # task the workers run. Every process must sign django-q2 payloads with the same
        # key, so one is generated once and reused.
        return generated_secret_key(env.str("DJANGO_SECRET_KEY_FILE", "") or BASE_DIR / "var" / "secret_key")
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
    # Development tools (fake WeChat, demo admin and jobs): management commands only; no
    # production module imports it (an import-linter contract).
    "devtools",
    "django_q",
    # The Tasks API backport (Django 5.2): its system checks and signal logging. Django 6
    # ships it as django.tasks: drop this line then (see jobs/tasks_compat.py).
    "django_tasks",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves STATIC_ROOT (filled by `collectstatic`) from gunicorn itself.
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

# Languages: each request gets the one its `django_language` cookie or its browser's
# Accept-Language asks for (LocaleMiddleware); LANGUAGE_CODE is only the fallback. The
# catalogues are locale/<lang>/LC_MESSAGES/django.po, compiled by the install path
# (`manage.py compilemessages`). Logs, metrics and the CLI stay English.
LANGUAGES = [("zh-hans", "简体中文"), ("en", "English")]
LANGUAGE_CODE = (env.str("LANGUAGE_CODE", "") or "en").lower()
if LANGUAGE_CODE not in dict(LANGUAGES):
    raise ConfigError(f"LANGUAGE_CODE must be one of {', '.join(dict(LANGUAGES))}, got {LANGUAGE_CODE!r}")
LOCALE_PATHS = [BASE_DIR / "locale"]
# After the session (which may hold the language) and before CommonMiddleware.
MIDDLEWARE.insert(MIDDLEWARE.index("django.contrib.sessions.middleware.SessionMiddleware") + 1,
                  "django.middleware.locale.LocaleMiddleware")
TIME_ZONE = env.str("TIME_ZONE", "Asia/Shanghai")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("STATIC_ROOT", str(BASE_DIR / "var" / "static"))

# Request bodies: the analytics endpoint takes batches of up to 1,000 events.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", 5 * 1024 * 1024, min_value=1024)

SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# --- HTTPS (production defaults; `manage.py check --deploy` passes with them) ---
# Behind gunicorn (deploy/gunicorn.conf.py) leave DJANGO_SECURE_PROXY_SSL_HEADER unset:
# gunicorn takes the scheme from X-Forwarded-Proto only on connections from its
# forwarded_allow_ips. Under another server behind a TLS proxy, name the header the proxy
# sets, e.g. "X-Forwarded-Proto" (value https) or "X-Forwarded-Proto: https", and only if the
# proxy always sets or overwrites it: otherwise a client could claim HTTPS.
SECURE_PROXY_SSL_HEADER = proxy_ssl_header(env.str("DJANGO_SECURE_PROXY_SSL_HEADER", ""))
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", PRODUCTION)
# Probes and scrapers often call over plain HTTP inside the network: no redirect for them.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0, min_value=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Preloading is a request to browser vendors to hard-code the domain: an explicit choice per
# domain, not a default. check --deploy would warn about it (W021) on every start.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# --- Redis: one set of connection keywords for every client in the project ---
REDIS = redis_config(env, embedded=EMBEDDED)
REDIS_SOCKET_TIMEOUT = redis_socket_timeout(env)  # also the analytics buffer's own Redis
# Sentinels that name the master (REDIS_SENTINELS); None: REDIS's host and port.
REDIS_SENTINEL = None if EMBEDDED else sentinel_config(env)

# --- Job engine (jobs/) ---
# Worker processes per queue. The seed's Asynq weights (critical 6, news 3, wechat 2,
# analytics 1, default 1) become dedicated worker counts: django-q2 has one queue per cluster.
# The queue list and the default counts live in jobs/queues.py (plain Python, no Django).
_default_workers = dict(DEFAULT_WORKERS)
if EMBEDDED:
    _default_workers = dict.fromkeys(_default_workers, 1)
JOBS_QUEUES = {
    name: env.int(f"JOBS_WORKERS_{name.upper()}", count, min_value=1, max_value=64)
    for name, count in _default_workers.items()
}
# A worker renews its lease every JOBS_HEARTBEAT_SECONDS; a lease runs out (and the job runs
# again elsewhere) only after JOBS_LEASE_SECONDS without renewal: the bound for a dead host.
# A dead worker on a live host is seen by that host in JOBS_HOLDER_CHECK_INTERVAL (reaper.py).
JOBS_LEASE_SECONDS = env.int("JOBS_LEASE_SECONDS", 10, min_value=5)
JOBS_HEARTBEAT_SECONDS = env.float("JOBS_HEARTBEAT_SECONDS", 2, min_value=0.5)
if JOBS_HEARTBEAT_SECONDS * 2 > JOBS_LEASE_SECONDS:
    raise ConfigError("JOBS_HEARTBEAT_SECONDS must be at most half of JOBS_LEASE_SECONDS "
                      "(one late renewal must not lose a live worker's lease)")
# One MySQL read or write of the engine's processes (qcluster: dispatcher, claims, lease
# renewals, handlers) waits at most JOBS_DB_TIMEOUT s: a connection whose server vanished is
# given up and the next statement runs on a fresh one. It must end well inside a lease, or a
# renewal stuck on a dead connection would let a running job's lease run out.
JOBS_DB_TIMEOUT = env.int("JOBS_DB_TIMEOUT", max(1, min(5, int(JOBS_LEASE_SECONDS - JOBS_HEARTBEAT_SECONDS) - 1)),
                          min_value=1)
if JOBS_HEARTBEAT_SECONDS + JOBS_DB_TIMEOUT >= JOBS_LEASE_SECONDS:
    raise ConfigError(f"JOBS_DB_TIMEOUT ({JOBS_DB_TIMEOUT}) plus JOBS_HEARTBEAT_SECONDS ({JOBS_HEARTBEAT_SECONDS:g}) "
                      f"must be less than JOBS_LEASE_SECONDS ({JOBS_LEASE_SECONDS}): a renewal that waits out "
                      f"the timeout must still come before the lease runs out")
PROCESS_ROLE = process_role(sys.argv)
if not EMBEDDED:
    DATABASES["default"]["OPTIONS"].update(database_timeouts(env, role=PROCESS_ROLE, engine_timeout=JOBS_DB_TIMEOUT))
JOBS_HOLDER_CHECK_INTERVAL = env.float("JOBS_HOLDER_CHECK_INTERVAL", 0.5, min_value=0.1)
# A queue with wake-ups waiting and no claim for this long is stalled: its pending jobs are
# re-pushed even though its list is not empty; a cluster of its own that claimed nothing for
# this long (no job running) while its list held wake-ups is wedged: the supervisor restarts it.
JOBS_STALL_AFTER = env.float("JOBS_STALL_AFTER", 10, min_value=1)
# The supervisor's main loop or the dispatcher not come round for this long is stuck where no
# timeout reaches (jobs/watchdog.py): the dispatcher is replaced, the supervisor restarts
# itself. Keep it above JOBS_DB_TIMEOUT and REDIS_SOCKET_TIMEOUT, which end ordinary waits.
JOBS_LOOP_STUCK_AFTER = env.float("JOBS_LOOP_STUCK_AFTER", 60, min_value=1)
JOBS_DISPATCH_INTERVAL = env.float("JOBS_DISPATCH_INTERVAL", 0.1, min_value=0.01)
# A cluster worker records a finished job in its next claim's transaction, or after this many
# ms if no claim comes first (jobs/services/completing.py); 0 writes each completion at once.
# The lease is not renewed meanwhile, so the delay must stay well inside it.
JOBS_COMPLETION_FLUSH_MS = env.int("JOBS_COMPLETION_FLUSH_MS", 10, min_value=0, max_value=JOBS_LEASE_SECONDS * 500)
JOBS_REPUSH_AFTER = env.int("JOBS_REPUSH_AFTER", 10, min_value=1)
JOBS_SHUTDOWN_GRACE = env.int("JOBS_SHUTDOWN_GRACE", 30, min_value=0)
JOBS_BACKOFF_BASE = env.float("JOBS_BACKOFF_BASE", 1.0, min_value=0)
JOBS_BACKOFF_CAP = env.float("JOBS_BACKOFF_CAP", 16.0, min_value=0)
JOBS_RETENTION_COMPLETED_DAYS = env.int("JOBS_RETENTION_COMPLETED_DAYS", 7, min_value=1)
JOBS_RETENTION_DEAD_DAYS = env.int("JOBS_RETENTION_DEAD_DAYS", 30, min_value=1)
JOBS_ALERT_PENDING_AGE = env.int("JOBS_ALERT_PENDING_AGE", 300, min_value=1)
JOBS_ALERT_DEAD_JOBS = env.int("JOBS_ALERT_DEAD_JOBS", 0, min_value=0)
# Job controls. A running job asked to cancel is seen by its worker's lease keeper within
# JOBS_CANCEL_POLL_SECONDS (one primary-key read per poll while a job runs), on any host;
# a handler that does not stop by itself is ended with its worker process after the job
# type's cancel_grace, JOBS_CANCEL_GRACE seconds unless the type says otherwise.
JOBS_CANCEL_POLL_SECONDS = env.float("JOBS_CANCEL_POLL_SECONDS", 0.5, min_value=0.1)
JOBS_CANCEL_GRACE = env.float("JOBS_CANCEL_GRACE", 10, min_value=0)
# A job over its type's concurrency limit comes back after 1-2x this many seconds (jobs/limits.py).
JOBS_LIMIT_RECHECK_SECONDS = env.float("JOBS_LIMIT_RECHECK_SECONDS", 0.5, min_value=0.05)

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

# Django's Tasks API (@task, .enqueue(), get_result()) runs on the job engine: every task is
# a ledger job (README: Tasks API). OPTIONS: CRITICAL_PRIORITY (default 50), the priority
# from which a task runs on the critical queue.
TASKS = {"default": {"BACKEND": "jobs.tasks_backend.LedgerBackend"}}

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
# The callback's signature covers only token, timestamp and nonce (never the body): a push is
# accepted only if its timestamp is within this many seconds of our clock, and each nonce once
# (remembered in Redis for twice this). Bodies are capped at WECHAT_CALLBACK_MAX_BYTES, and a
# pushed article_url must be https on one of WECHAT_ARTICLE_HOSTS. See wechat/callback_security.py.
WECHAT_CALLBACK_WINDOW = env.int("WECHAT_CALLBACK_WINDOW", 300, min_value=10, max_value=86400)
WECHAT_CALLBACK_MAX_BYTES = env.int("WECHAT_CALLBACK_MAX_BYTES", 64 * 1024, min_value=1024, max_value=1024 * 1024)
WECHAT_ARTICLE_HOSTS = env.list("WECHAT_ARTICLE_HOSTS", ["mp.weixin.qq.com"])
# The console's EncodingAESKey (43 characters): turns on the compatible and safe message modes
# (decryption, the msg_signature check, the encrypted echostr of the server check). With it set,
# plaintext pushes are refused unless WECHAT_CALLBACK_ALLOW_PLAINTEXT=1 (while switching modes
# in the console). See wechat/crypto.py. A secret: never logged.
WECHAT_ENCODING_AES_KEY = env.str("WECHAT_ENCODING_AES_KEY", "")
if WECHAT_ENCODING_AES_KEY and not re.fullmatch(r"[A-Za-z0-9+/]{43}", WECHAT_ENCODING_AES_KEY):
    raise ConfigError("WECHAT_ENCODING_AES_KEY must be the 43 letters and digits of the account console's "
                      "EncodingAESKey")
WECHAT_CALLBACK_ALLOW_PLAINTEXT = env.bool("WECHAT_CALLBACK_ALLOW_PLAINTEXT", not WECHAT_ENCODING_AES_KEY)
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
# ...and in UTF-8 bytes, as practitioners report WeChat counting (45003 at 64 bytes of title;
# about 8 Chinese characters of author, 120 of digest): both limits apply, the stricter wins.
WECHAT_TITLE_MAX_BYTES = env.int("WECHAT_TITLE_MAX_BYTES", 64, min_value=1)
WECHAT_AUTHOR_MAX_BYTES = env.int("WECHAT_AUTHOR_MAX_BYTES", 24, min_value=1)
WECHAT_DIGEST_MAX_BYTES = env.int("WECHAT_DIGEST_MAX_BYTES", 360, min_value=1)
# Images in an item's content are downloaded and re-uploaded to WeChat: only over http(s), at
# most this size, only from these hosts (empty: any; ".example.com" takes its subdomains), and
# never from private, loopback or link-local addresses unless allowed (the tests' fake is on
# 127.0.0.1).
WECHAT_IMAGE_MAX_BYTES = env.int("WECHAT_IMAGE_MAX_BYTES", 1_000_000, min_value=1024)
WECHAT_IMAGE_HOSTS = env.list("WECHAT_IMAGE_HOSTS", [])
WECHAT_IMAGE_ALLOW_PRIVATE = env.bool("WECHAT_IMAGE_ALLOW_PRIVATE", False)
# One deadline for a whole image download, redirects included (the per-read timeout alone
# lets a server sending one byte at a time hold a worker until the job times out).
WECHAT_IMAGE_DEADLINE = env.float("WECHAT_IMAGE_DEADLINE", 60, min_value=1)
# freepublish/get costs one of 100 calls a day: the PUBLISHJOBFINISH push is the main path,
# polling (doubling from FIRST up to MAX_INTERVAL) the fallback.
WECHAT_POLL_FIRST = env.float("WECHAT_POLL_FIRST", 60, min_value=0.1)
WECHAT_POLL_MAX_INTERVAL = env.float("WECHAT_POLL_MAX_INTERVAL", 1800, min_value=0.1)
# How long after its submit an article may wait for WeChat (publishing, or checking after a
# submit with no answer), however its polls are spaced; then it goes to a person (unknown).
# The original-content and platform checks can take hours: a day by default, at most 30.
WECHAT_PUBLISH_MAX_WAIT = env.int("WECHAT_PUBLISH_MAX_WAIT", 86400, min_value=60, max_value=30 * 86400)
if env.str("WECHAT_MAX_POLLS", ""):
    # Refused rather than ignored: a count of polls is no duration (it depends on the
    # intervals), and an operator who set it must learn that it no longer stops polling.
    raise ConfigError("WECHAT_MAX_POLLS is no longer read: how long an article may stay publishing is "
                      "WECHAT_PUBLISH_MAX_WAIT (seconds, default 86400); remove WECHAT_MAX_POLLS")
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
if WECHAT_PUBLISH_MAX_WAIT <= max(WECHAT_POLL_FIRST, WECHAT_RECONCILE_DELAY):
    raise ConfigError(f"WECHAT_PUBLISH_MAX_WAIT ({WECHAT_PUBLISH_MAX_WAIT} s) must be longer than WECHAT_POLL_FIRST "
                      f"({WECHAT_POLL_FIRST:g} s) and WECHAT_RECONCILE_DELAY ({WECHAT_RECONCILE_DELAY:g} s): "
                      "else no poll or search happens before it runs out")
# Waits for WeChat's rate limits (45011, 53501) do not spend retries; this bounds them.
WECHAT_RATE_LIMIT_WAIT = env.float("WECHAT_RATE_LIMIT_WAIT", 60, min_value=0.1)
WECHAT_MAX_RATE_LIMIT_WAITS = env.int("WECHAT_MAX_RATE_LIMIT_WAITS", 10, min_value=1)
# urllib3 logs request URLs at DEBUG, and WeChat puts the access token in the query string.
LOGGING["loggers"]["urllib3"] = {"level": "INFO"}

# --- Operations: /healthz, /readyz, /metrics, alerts (jobs/monitoring*) ---
# Where alerts go (dead jobs, old pending jobs). It often embeds a token: never logged in full.
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", "")
if ALERT_WEBHOOK_URL and not ALERT_WEBHOOK_URL.startswith(("http://", "https://")):
    raise ConfigError("ALERT_WEBHOOK_URL must start with http:// or https://")
ALERT_WEBHOOK_TIMEOUT = env.float("ALERT_WEBHOOK_TIMEOUT", 5, min_value=0.1)
# One alert per condition (e.g. "dead jobs on news") per this many minutes, across processes.
ALERT_REPEAT_MINUTES = env.int("ALERT_REPEAT_MINUTES", 30, min_value=1)
# Bearer token for /metrics and for /readyz's details. Without it /metrics answers 403
# unless METRICS_PUBLIC=1 (on by default only in debug and embedded mode: restrict it at the
# proxy then); /readyz details are shown to staff with jobs.view_job only.
METRICS_TOKEN = env.str("METRICS_TOKEN", "")
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", not PRODUCTION)
# A scrape runs a few bounded ledger queries; repeated requests within this reuse the answer.
METRICS_CACHE_SECONDS = env.float("METRICS_CACHE_SECONDS", 2, min_value=0)
READYZ_HEARTBEAT_MAX_AGE = env.int("READYZ_HEARTBEAT_MAX_AGE", 90, min_value=1)
READYZ_MAX_DEAD_JOBS = env.int("READYZ_MAX_DEAD_JOBS", 100, min_value=0)
# The queues whose stall fails /readyz. Empty: those this deployment serves, i.e. a cluster of
# it is alive or claimed from it in the last hour; a queue no cluster serves is not watched.
READYZ_QUEUES = env.list("READYZ_QUEUES", [])
if set(READYZ_QUEUES) - set(JOBS_QUEUES):
    raise ConfigError(f"READYZ_QUEUES names unknown queue(s) {sorted(set(READYZ_QUEUES) - set(JOBS_QUEUES))}; "
                      f"known: {', '.join(JOBS_QUEUES)}")

# --- Analytics (analytics/) ---
# Events go to a Redis Stream; `news:analytics` jobs (every 5 minutes, and as soon as the
# buffer holds ANALYTICS_BATCH_THRESHOLD events) count them into MariaDB in chunks.
ANALYTICS_BATCH_THRESHOLD = env.int("ANALYTICS_BATCH_THRESHOLD", 10_000, min_value=1)
ANALYTICS_BATCH_CHUNK = env.int("ANALYTICS_BATCH_CHUNK", 5_000, min_value=1, max_value=50_000)
# One run stops after this many events or seconds (the job's timeout is 300 s) and, if the
# buffer is not empty, enqueues the next run.
ANALYTICS_BATCH_MAX_EVENTS = env.int("ANALYTICS_BATCH_MAX_EVENTS", 1_000_000, min_value=1)
ANALYTICS_BATCH_MAX_SECONDS = env.float("ANALYTICS_BATCH_MAX_SECONDS", 120, min_value=1)
# Events read by a batch that died (SIGKILL, lost host) are taken over by the next run once
# they have been idle this long. Must exceed the time one chunk takes to commit.
ANALYTICS_CLAIM_IDLE_SECONDS = env.float("ANALYTICS_CLAIM_IDLE_SECONDS", 30, min_value=0)
ANALYTICS_RAW_RETENTION_DAYS = env.int("ANALYTICS_RAW_RETENTION_DAYS", 30, min_value=1)
# Replicas that must hold an event before ingest answers (Redis WAIT). 0: answer
# once the master has it; a failover can then lose the events not yet replicated.
ANALYTICS_WAIT_REPLICAS = env.int("ANALYTICS_WAIT_REPLICAS", 0, min_value=0, max_value=16)
ANALYTICS_WAIT_TIMEOUT_MS = env.int("ANALYTICS_WAIT_TIMEOUT_MS", 100, min_value=1)
ANALYTICS_HTTP_MAX_BYTES = env.int("ANALYTICS_HTTP_MAX_BYTES", 1024 * 1024, min_value=1024)
# The buffer on its own Redis (None: the project's Redis). See readme: Analytics security.
ANALYTICS_REDIS = analytics_redis_config(env)
# Back-pressure: past this many buffered events, writes are refused whole (the endpoint
# answers 503 with Retry-After) so the buffer cannot fill the Redis the jobs need. 0: off.
ANALYTICS_BUFFER_MAX_EVENTS = env.int("ANALYTICS_BUFFER_MAX_EVENTS", 1_000_000, min_value=0)
# The same for the buffer's memory, estimated per event from its size (typical events ~42
# bytes, the largest allowed ~5.4 KB): caps what large events can take. 0: off.
ANALYTICS_BUFFER_MAX_BYTES = env.int("ANALYTICS_BUFFER_MAX_BYTES", 256 * 1024 * 1024, min_value=0)
ANALYTICS_BUFFER_RETRY_AFTER = env.int("ANALYTICS_BUFFER_RETRY_AFTER", 30, min_value=1)
# Per client address and window; 0 turns a limit off. Generous by default: many readers
# can share one address (offices, mobile carriers' NAT).
ANALYTICS_RATE_WINDOW_SECONDS = env.float("ANALYTICS_RATE_WINDOW_SECONDS", 60, min_value=1)
ANALYTICS_RATE_REQUESTS = env.int("ANALYTICS_RATE_REQUESTS", 600, min_value=0)
ANALYTICS_RATE_EVENTS = env.int("ANALYTICS_RATE_EVENTS", 20_000, min_value=0)
if 0 < ANALYTICS_RATE_EVENTS < 1000:
    # A request may carry 1,000 events: a smaller budget would refuse it in every window.
    raise ConfigError(f"ANALYTICS_RATE_EVENTS must be 0 or >= 1000, got {ANALYTICS_RATE_EVENTS}")
# Behind a reverse proxy: the header it sets to the client's address (e.g. X-Forwarded-For;
# its last address is used). Empty: REMOTE_ADDR. Never set it without a proxy that
# overwrites the header, or clients choose their own address.
ANALYTICS_CLIENT_IP_HEADER = meta_header_name(env, "ANALYTICS_CLIENT_IP_HEADER")
