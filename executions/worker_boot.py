"""Module the ``dramatiq`` command imports in each worker process: Django first, then the actors of
every installed app (each app's ``actors`` module: the engine's, the post-mortems')."""
from __future__ import annotations

import logging
import os
import stat
import tempfile

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
# Every worker process writes its metrics (Dramatiq's and the engine's) to one directory, which
# Dramatiq's exposition server (port 9191, dramatiq_prom_port) serves; set before any metric exists.
_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # executions.metrics.MULTIPROC_DIR: not imported yet
_DRAMATIQ_DB = "dramatiq_prom_db"  # the (lower-case) name Dramatiq's middleware reads


def _own_directory() -> str:
    """Return this user's private metrics directory in the temp directory, created mode 0700.

    Only for a ``dramatiq`` started by hand: ``runworker`` names a directory of its process set. A
    fixed name in a shared temp directory may have been made by someone else: refuse it then.
    """
    path = os.path.join(tempfile.gettempdir(), f"detflow-metrics-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    found = os.lstat(path)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        raise RuntimeError(f"{path} is not a private directory of this user: set {_MULTIPROC_DIR} "
                           "to a directory for the worker processes' metrics, or run them with "
                           "python manage.py runworker")
    return path


if not os.environ.get(_MULTIPROC_DIR):
    os.environ[_MULTIPROC_DIR] = os.environ.get(_DRAMATIQ_DB) or _own_directory()
os.environ.setdefault(_DRAMATIQ_DB, os.environ[_MULTIPROC_DIR])
django.setup()
# Dramatiq's own lines at INFO in the worker processes ("Worker process is ready for action", a
# consumer restarted): an operator starting runworker reads them. detflow_site.settings keep the
# dramatiq loggers at WARNING everywhere else (the API, rundev's threads, the commands).
logging.getLogger("dramatiq").setLevel(logging.INFO)

from dramatiq.middleware.prometheus import Prometheus  # noqa: E402

from executions.broker import broker  # noqa: E402
from executions.workers import declared_queues  # noqa: E402

broker.add_middleware(Prometheus())
declared_queues()  # declares every actor on the configured broker
