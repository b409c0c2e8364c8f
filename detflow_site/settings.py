"""Django settings, from the environment; every value unset means the embedded default."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from detflow_site.conf import from_environ, parse

BASE_DIR = Path(__file__).resolve().parent.parent

#: Raw ``DETFLOW_*`` values; ``detflow_site.conf.get()`` parses them and a system check reports bad ones.
DETFLOW = from_environ(os.environ)
_detflow = parse(DETFLOW)[0]

#: The key used when DJANGO_SECRET_KEY is unset or empty; a system check refuses it (and every other
#: well-known or weak key) when DEBUG is off, and a server process does not start on it.
DEVELOPMENT_SECRET_KEY = "detflow-insecure-development-key"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or DEVELOPMENT_SECRET_KEY
#: Off unless DJANGO_DEBUG=1: gunicorn, the image and the workers never serve debug pages.
#: ``manage.py rundev`` and ``manage.py demo`` (on 127.0.0.1, for one developer) turn it on unless
#: DJANGO_DEBUG is set.
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h]

# Production (DEBUG off): HTTPS only, secure cookies, HSTS; TLS may end at a proxy that sets
# X-Forwarded-Proto. DJANGO_SECURE_SSL_REDIRECT=0 serves plain HTTP (a local compose try-out).
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = os.environ.get("DJANGO_SECURE_SSL_REDIRECT", "1") == "1"
    SESSION_COOKIE_SECURE = SECURE_SSL_REDIRECT
    CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "detflow_site.apps.DetflowSiteConfig",
    "detflow_site.apps.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "axes",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "workflows.apps.WorkflowsConfig",
    "executions.apps.ExecutionsConfig",
    "insights.apps.InsightsConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

# Admin logins are limited by django-axes: 5 failures for one user name from one address lock that
# pair out for 15 minutes (each further try restarts the wait); attempts are rows in Django's own
# database. API tokens never pass through authenticate(), so the limit is the admin login's alone.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ONLY_ADMIN_SITE = True
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = dt.timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_COOLOFF_MESSAGE = ("Too many failed logins: this account is locked from your address for 15 minutes. "
                        "Try again later, or ask an administrator to unlock it "
                        "(python manage.py axes_reset_username NAME).")

ROOT_URLCONF = "detflow_site.urls"
WSGI_APPLICATION = "detflow_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# Django's own database holds only auth, sessions, tokens and the admin log: never workflow state.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}

# Django reads a JSON body whole before the API's parser sees it: let it read what the API accepts.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(_detflow.API_MAX_BODY_BYTES, 2_621_440)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
#: ``collectstatic`` gathers the admin's and the API docs' files here; with DEBUG off WhiteNoise
#: serves them (with DEBUG on, runserver does).
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT", str(BASE_DIR / "var" / "static"))
if not DEBUG:
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

# Django's cache is django-redis on the engine's Redis (throttles, dashboard aggregates). The URL is
# resolved on first use, when the embedded redis-server can start; a Redis that is down makes the
# cache miss instead of failing the request, so a throttle lets requests through rather than 500.
CACHES = {
    "default": {
        "BACKEND": "detflow_site.cache.RedisCache",
        "LOCATION": "",
        "KEY_PREFIX": "detflow-cache",
        "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 2},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["detflow_site.api.permissions.HasRole"],
    "DEFAULT_PARSER_CLASSES": ["detflow_site.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "detflow_site.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "detflow_site.api.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "detflow API",
    "DESCRIPTION": "Start, follow and operate durable workflow executions.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ExecutionStatusEnum": "executions.engine.ExecutionStatus",
        "StepStatusEnum": "executions.engine.StepStatus",
        "HealthStatusEnum": ["ok", "degraded"],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"ids": {"()": "detflow_site.logs.ContextFilter"}},
    "formatters": {
        "plain": {"()": "detflow_site.logs.PlainFormatter",
                  "format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "detflow_site.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": _detflow.LOG_FORMAT,
                             "filters": ["ids"]}},
    "loggers": {
        "detflow": {"handlers": ["console"], "level": _detflow.LOG_LEVEL, "propagate": False},
        "dramatiq": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "axes": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
