"""Module the ``dramatiq`` command imports in each worker process: Django first, then the actors."""
from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
django.setup()

from executions import actors  # noqa: E402,F401  (declares the actor on the configured broker)
