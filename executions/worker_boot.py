"""Module the ``dramatiq`` command imports in each worker process: Django first, then the actors of
every installed app (each app's ``actors`` module: the engine's, the post-mortems')."""
from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
django.setup()

from executions.workers import declared_queues  # noqa: E402

declared_queues()  # declares every actor on the configured broker
