"""The one settings module. Every value comes from the environment.

The defaults are the embedded setup: SQLite and a filesystem Celery broker under var/, so a fresh
clone runs with nothing but Python. docker-compose.yml sets the production values (PostgreSQL,
Redis, secure cookies). The README has a table of every variable read here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    # An empty variable means "not set": `DATABASE_URL= ./dev up` gets the embedded default.
    return os.environ.get(name) or default


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


VAR_DIR = Path(env_str("RLHF_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    # A key generated once per install and kept under var/ is safer than any key written in the
    # source: the embedded setup stays secure without asking a newcomer to invent one.
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "rest_framework",
    "drf_spectacular",
    "annotation",
    "annotation.api",
    "training",
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
    "config.security.SecurityHeadersMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600),
        # A connection that died while idle (PostgreSQL restarted) is dropped and reopened on the
        # next request instead of failing it.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Without a busy timeout the web process and the worker, which share the file, fail each
    # other's writes with "database is locked" instead of waiting a moment.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif env_bool("DATABASE_JIT_OFF", True):
    # PostgreSQL compiles a statement to machine code (JIT) once its estimated cost passes a
    # threshold that any statement over ~100,000 rows reaches; the compiling takes 0.1-0.5 s, more
    # than running the statement. The label-statistics triggers run such statements on every
    # import (they took a 100,000-pair import from 3.8 to 5 s of database time), and no statement
    # of this app runs long enough to repay the compiling.
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options["options"] = (options.get("options", "") + " -c jit=off").strip()

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# config.auth.Backend is Django's ModelBackend with a faster per-request look-up; Django's own stays
# listed for sessions that it logged in (see the class).
AUTHENTICATION_BACKENDS = ["config.auth.Backend", "django.contrib.auth.backends.ModelBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Serving straight from the finders means the embedded setup needs no collectstatic step; in
# production the compose file runs collectstatic and whitenoise serves the hashed copies.
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", True)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Where trained models, data snapshots and run logs live. The workers and the web process must
# see the same folder (a shared volume in docker-compose.yml).
ARTIFACT_ROOT = Path(env_str("ARTIFACT_ROOT", str(VAR_DIR / "artifacts")))

# Upload and request size limits: a bigger import goes through the management command.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 50 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = env_int("FILE_UPLOAD_MAX_MEMORY_SIZE", 10 * 1024 * 1024)

# Security. The secure defaults apply whenever DEBUG is off; each can be loosened through the
# environment (for example SECURE_SSL_REDIRECT=0 behind a proxy that already redirects).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG and env_bool("HTTPS", False))
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", env_bool("HTTPS", False))
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", env_bool("HTTPS", False))
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if env_bool("HTTPS", False) else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", SECURE_HSTS_SECONDS > 0)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# Django's database sessions, with the per-request look-up prepared (config/sessions.py).
SESSION_ENGINE = "config.sessions"
# Content-Security-Policy and Permissions-Policy come from config.security; a directive here
# replaces its default there, e.g. {"img-src": "'self' data: https://cdn.example"}.
CONTENT_SECURITY_POLICY: dict[str, str] = {}

# Two caches. "default" is per process (DRF's API throttle: a brake, not a quota). "shared" holds the
# login throttle's counters, which every gunicorn worker must see, or each would count failed
# logins on its own: production sets CACHE_URL to Redis. The login throttle fails open when that
# cache is down, so a Redis outage never locks annotators out.
CACHE_URL = env_str("CACHE_URL", "locmem://")
if CACHE_URL.startswith(("redis://", "rediss://")):
    _shared_cache = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
elif CACHE_URL.startswith("locmem://"):
    _shared_cache = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "shared"}
else:
    raise ImproperlyConfigured(f"CACHE_URL={CACHE_URL!r}: expected redis://host:port/db or locmem://")
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, "shared": _shared_cache}

# Login throttling (config.auth): this many failed attempts for one username from one address
# within the window locks that pair out until the window has passed.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("LOGIN_FAILURE_WINDOW_SECONDS", 15 * 60)

# Celery. The embedded broker is kombu's filesystem transport: messages are files under var/, so
# the worker and beat run with no server. Production points CELERY_BROKER_URL at Redis.
CELERY_DIR = VAR_DIR / "celery"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", f"file://{CELERY_DIR / 'results'}")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control", "results"):
        (CELERY_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_DIR / "queue"),
        "data_folder_out": str(CELERY_DIR / "queue"),
        "processed_folder": str(CELERY_DIR / "processed"),
        "control_folder": str(CELERY_DIR / "control"),
        "store_processed": False,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
# A training task acknowledges its message only when it is done, so a worker killed mid-run
# leaves the message to be redelivered; the run's conditional claim makes the redelivery harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The loop's tick is light bookkeeping and must not wait behind a training run on the gpu queue;
# an exact name wins over the glob.
CELERY_TASK_ROUTES = {"training.tasks.loop_tick": {"queue": "celery"}, "training.tasks.*": {"queue": "gpu"}}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# A running run whose worker has not reported for this long is failed by the loop's reaper. The
# worker reports every 2 s while training, so a minute of silence means it is gone.
TRAINING_HEARTBEAT_TIMEOUT = env_int("TRAINING_HEARTBEAT_TIMEOUT", 120)
# A run still queued after this long has its message sent again by the loop's tick: the broker
# may have been down when it was queued. The claim makes a duplicate message harmless.
TRAINING_REDISPATCH_AFTER = env_int("TRAINING_REDISPATCH_AFTER", 300)
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Scripts send `Authorization: Token <key>`; the pages use their session, with CSRF checks.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotation.api.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "annotation.api.errors.SizeLimitedJSONParser",
        # Refuses an upload over the import limit before reading it (Django would spool it to disk).
        "annotation.api.errors.SizeLimitedMultiPartParser",
    ],
    "EXCEPTION_HANDLER": "annotation.api.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "annotation.api.pagination.IdCursorPagination",
    "PAGE_SIZE": 100,
    # `format` is an export parameter (trl, csv, parquet...), not DRF's renderer switch.
    "URL_FORMAT_OVERRIDE": None,
    # Per process (the default local-memory cache): a brake on a runaway script, not a quota.
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": "120/minute",
        "user": "6000/minute",
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Feedback loop API",
    "DESCRIPTION": (
        "Prompts, comparisons, preferences, exports and training runs. Authenticate with "
        "`Authorization: Token <key>`, or with a logged-in session (send the CSRF token). Every error is "
        '`{"message": ..., "errors": {field: [...]}}`.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RunKindEnum": "training.models.RunKind",
        "ModelKindEnum": "training.models.ModelKind",
        "RunStatusEnum": "training.models.RunStatus",
        "ChoiceEnum": "annotation.models.Choice",
        "SideEnum": "annotation.models.Side",
        "StrengthEnum": "annotation.models.Strength",
        "RoleEnum": "annotation.models.Role",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "annotation.api.schema.add_error_responses",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
