"""WSGI entry point for gunicorn (and ``runserver``): it does not start on a configuration that
the system checks refuse (a bad ``DETFLOW_*`` value, a well-known secret key with DEBUG off)."""
from __future__ import annotations

import os
import sys

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

#: gunicorn's "App failed to load" exit status: its master stops instead of booting workers forever.
APP_LOAD_ERROR = 4

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
try:
    application = get_wsgi_application()
    from detflow_site.checks import serving_errors

    errors = serving_errors()
except ImproperlyConfigured as exc:
    errors = [str(exc)]
if errors:
    for line in errors:
        sys.stderr.write(f"detflow: configuration error: {line}\n")
    sys.stderr.flush()
    raise SystemExit(APP_LOAD_ERROR)
