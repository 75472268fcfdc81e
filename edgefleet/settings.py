"""EdgeFleet settings, all read from the environment.

Embedded defaults (no variables set): SQLite under var/, Celery's file-system broker under var/,
a local-memory cache, DEBUG on. ``EDGEFLEET_ENV=production`` turns DEBUG off and refuses to start
without SECRET_KEY and ALLOWED_HOSTS.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from kombu import Exchange, Queue

from .env import env_bool, env_int, env_list, env_required, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("EDGEFLEET_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

ENVIRONMENT = env_str("EDGEFLEET_ENV", "development")
PRODUCTION = ENVIRONMENT == "production"

if PRODUCTION:
    SECRET_KEY = env_required("SECRET_KEY")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
    if not ALLOWED_HOSTS:
        env_required("ALLOWED_HOSTS")
    DEBUG = False
else:
    SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-do-not-use-in-production-0123456789")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
    DEBUG = env_bool("DEBUG", True)

CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "fleet",
    "compression",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "edgefleet.urls"
WSGI_APPLICATION = "edgefleet.wsgi.application"

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
                "fleet.context_processors.roles",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'edgefleet.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while a worker writes; IMMEDIATE avoids "database is locked"
    # upgrades from read to write transactions.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
        "transaction_mode": "IMMEDIATE",
    }
    # A file (not :memory:) so worker and live-server processes share it; one per test run so
    # concurrent runs in one checkout do not trample each other.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-edgefleet-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DB_VENDOR = "sqlite" if "sqlite" in DATABASES["default"]["ENGINE"] else "postgresql"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Celery -------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")


def _redis_db_plus_one(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{db + 1}"))


if REDIS_URL:
    # The cache gets its own Redis database (the broker's + 1 unless CACHE_URL says otherwise):
    # clearing the cache must never flush Celery's queues.
    CACHE_URL = env_str("CACHE_URL", _redis_db_plus_one(REDIS_URL))
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3 * 3600}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    _broker_dir = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    (VAR_DIR / "celery-results").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND = f"file://{VAR_DIR / 'celery-results'}"
BROKER_KIND = "redis" if REDIS_URL else "filesystem"

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES = (
    Queue("default", Exchange("default"), routing_key="default"),
    # One benchmark at a time per host: run the compress queue with --concurrency=1.
    Queue("compress", Exchange("compress"), routing_key="compress"),
)
CELERY_TASK_ROUTES = {"compression.tasks.*": {"queue": "compress"}}
CELERY_RESULT_EXPIRES = timedelta(days=1)
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Other apps add their periodic tasks here (presence, rollups, retention, rollouts).
CELERY_BEAT_SCHEDULE: dict = {}
# Telemetry (fleet.telemetry): each task takes no arguments and uses the current time.
CELERY_BEAT_SCHEDULE.update({
    "telemetry-presence": {"task": "fleet.telemetry.presence", "schedule": 10.0},
    "telemetry-alerts": {"task": "fleet.telemetry.alerts", "schedule": 30.0},
    "telemetry-rollups": {"task": "fleet.telemetry.rollups", "schedule": 60.0},
    "telemetry-retention": {"task": "fleet.telemetry.retention", "schedule": 3600.0},
})
# Deployments (fleet.deploy_tasks, docs/deployments.md): rollouts advance every 15 s.
CELERY_IMPORTS = (*globals().get("CELERY_IMPORTS", ()), "fleet.deploy_tasks")
CELERY_BEAT_SCHEDULE.update({
    "deployments-advance": {"task": "fleet.deployments.advance", "schedule": 15.0},
    "deployments-reevaluate": {"task": "fleet.deployments.reevaluate", "schedule": 300.0},
})
# Compression: remove temporary files left by crashed uploads or workers.
CELERY_BEAT_SCHEDULE["compression-sweep-temporary"] = {
    "task": "compression.tasks.sweep_temporary_files", "schedule": 3600.0,
}
# ... and stored files no row references any more (older than a day).
CELERY_BEAT_SCHEDULE["compression-collect-artifacts"] = {
    "task": "compression.tasks.collect_artifacts", "schedule": 86400.0,
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# --- Auth -------------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "login"

# --- I18N / time --------------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static and media -------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
MEDIA_ROOT = VAR_DIR / "media"
ARTIFACT_ROOT = Path(env_str("EDGEFLEET_ARTIFACT_ROOT", str(VAR_DIR / "artifacts")))
MAX_MODEL_UPLOAD_BYTES = env_int("EDGEFLEET_MAX_MODEL_UPLOAD_BYTES", 2 * 1024**3)
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024**2  # larger uploads stream to a temporary file
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("EDGEFLEET_MAX_REQUEST_BYTES", 8 * 1024**2)

# --- REST framework ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fleet.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["fleet.permissions.ViewerReadOperatorWrite"],
    "DEFAULT_PAGINATION_CLASS": "fleet.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"enroll": env_str("EDGEFLEET_ENROLL_RATE", "60/min")},
    "EXCEPTION_HANDLER": "fleet.api.errors.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "EdgeFleet API",
    "DESCRIPTION": "Operators' API v1 and the device agent protocol v1.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "DeviceStatusEnum": "fleet.models.devices.DeviceStatus",
        "UserRoleEnum": ["viewer", "operator", "admin"],
        "CompressionJobStatusEnum": "compression.models.JobStatus",
        "VariantStatusEnum": "compression.models.VariantStatus",
    },
}

# --- EdgeFleet --------------------------------------------------------------------------------
EDGEFLEET = {
    "TELEMETRY_INTERVAL_S": env_int("EDGEFLEET_TELEMETRY_INTERVAL_S", 10),
    "ENROLLMENT_TOKEN_TTL_HOURS": env_int("EDGEFLEET_ENROLLMENT_TOKEN_TTL_HOURS", 24 * 7),
}
# Telemetry ingest, retention, rollups and presence (docs/telemetry.md).
EDGEFLEET_TELEMETRY = {
    "MAX_BATCH": env_int("EDGEFLEET_TELEMETRY_MAX_BATCH", 1000),
    "MAX_FUTURE_S": env_int("EDGEFLEET_TELEMETRY_MAX_FUTURE_S", 300),
    # off: a report is acknowledged before PostgreSQL flushes it to disk (a server crash may lose
    # the last fraction of a second of acknowledged samples; see docs/telemetry.md).
    "SYNCHRONOUS_COMMIT": env_bool("EDGEFLEET_TELEMETRY_SYNCHRONOUS_COMMIT", True),
    "RAW_RETENTION_DAYS": env_int("EDGEFLEET_RAW_RETENTION_DAYS", 7),
    "ROLLUP_1M_RETENTION_DAYS": env_int("EDGEFLEET_ROLLUP_1M_RETENTION_DAYS", 30),
    "ROLLUP_1H_RETENTION_DAYS": env_int("EDGEFLEET_ROLLUP_1H_RETENTION_DAYS", 400),
    "ROLLUP_LOOKBACK_S": env_int("EDGEFLEET_ROLLUP_LOOKBACK_S", 600),
    "ROLLUP_LATE_AFTER_S": env_int("EDGEFLEET_ROLLUP_LATE_AFTER_S", 300),
    "PRESENCE_GRACE_S": env_int("EDGEFLEET_PRESENCE_GRACE_S", 30),
    "PARTITION_DAYS_AHEAD": env_int("EDGEFLEET_PARTITION_DAYS_AHEAD", 7),
    "DELETE_BATCH": env_int("EDGEFLEET_RETENTION_DELETE_BATCH", 5000),
    "SEQ_CACHE_TTL_S": 7 * 86400,
    "WEBHOOK_TIMEOUT_S": env_int("EDGEFLEET_WEBHOOK_TIMEOUT_S", 5),
    "WEBHOOK_MAX_RETRIES": env_int("EDGEFLEET_WEBHOOK_MAX_RETRIES", 5),
}

# --- Security ---------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads it to send X-CSRFToken
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
