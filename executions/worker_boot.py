"""Module the ``dramatiq`` command imports in each worker process: Django first, then the actors of
every installed app (each app's ``actors`` module: the engine's, the post-mortems')."""
from __future__ import annotations

import os
import tempfile

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
# Every worker process writes its metrics (Dramatiq's and the engine's) to one directory, which
# Dramatiq's exposition server (port 9191, dramatiq_prom_port) serves; set before any metric exists.
_DRAMATIQ_DB = "dramatiq_prom_db"  # the (lower-case) name Dramatiq's middleware reads
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.environ.get(_DRAMATIQ_DB, os.path.join(tempfile.gettempdir(), "dramatiq-prometheus")),
)
os.environ.setdefault(_DRAMATIQ_DB, os.environ["PROMETHEUS_MULTIPROC_DIR"])
django.setup()

from dramatiq.middleware.prometheus import Prometheus  # noqa: E402

from executions.broker import broker  # noqa: E402
from executions.workers import declared_queues  # noqa: E402

broker.add_middleware(Prometheus())
declared_queues()  # declares every actor on the configured broker
