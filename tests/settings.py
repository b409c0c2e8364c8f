"""Test settings: the project's settings with short leases and the test handlers loaded.

Every ``DETFLOW_*`` variable in the environment still wins, so the same suite runs against a real
MongoDB and Redis when ``DETFLOW_MONGODB_URL`` and ``DETFLOW_REDIS_URL`` are set.
"""
from __future__ import annotations

import os

from detflow_site.conf import from_environ
from detflow_site.settings import *  # noqa: F403
from tests.safety import refuse_a_user_database

# Before Django connects: the suite empties its database (tests/safety.py says which it may use).
refuse_a_user_database()

DETFLOW = {
    "HANDLER_MODULES": "tests.handlers",
    "LEASE_S": "2",
    "SWEEP_INTERVAL_S": "0.2",
    "SWEEP_GRACE_S": "1",
    # Post-mortems on request only: the engine's suites count commands and time recoveries, and an
    # insights actor working beside them would disturb both. tests/integration/insights/ switches
    # it on where it tests it.
    "INSIGHTS_AUTO": "false",
    # Retention passes on request only (tests/integration/test_retention.py switches them on): a
    # sweeper's pass beside a test that ages executions by hand would remove them under it.
    "PURGE_INTERVAL_S": "0",
    **from_environ(os.environ),
}
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
LOGGING = {"version": 1, "disable_existing_loggers": False}
# DEBUG is off here as in production, but Django's test client and the live server speak plain HTTP
# and nothing is collected into STATIC_ROOT: no HTTPS redirect, no secure-only cookies, no WhiteNoise.
SECURE_SSL_REDIRECT = SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
MIDDLEWARE = [m for m in MIDDLEWARE if m != "whitenoise.middleware.WhiteNoiseMiddleware"]  # noqa: F405
