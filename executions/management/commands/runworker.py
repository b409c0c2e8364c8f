"""``manage.py runworker``: Dramatiq worker processes for the engine, plus the recovery sweeper."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from django.conf import settings as django_settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from detflow_site import conf, services
from executions import metrics
from executions.workers import declared_queues

#: The (lower-case) variable Dramatiq's Prometheus middleware reads for its directory.
_DRAMATIQ_DB = "dramatiq_prom_db"


class Command(BaseCommand):
    help = "Run Dramatiq worker processes for detflow and the recovery sweeper."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument("--threads", type=int, default=8, help="threads per process (default 8)")
        parser.add_argument("--queues", nargs="+",
                            help="queues to consume (default: all: DETFLOW_QUEUE for the engine, "
                                 "DETFLOW_QUEUE-insights for post-mortems)")
        parser.add_argument("--no-sweeper", action="store_true", help="do not run the sweeper here")

    def handle(self, *args: Any, **options: Any) -> None:
        command = worker_command(options["processes"], options["threads"], options["queues"])
        run(command, sweeper=not options["no_sweeper"], out=self.stdout.write)


def worker_command(processes: int, threads: int, queues: list[str] | None) -> list[str]:
    """Check the topology and return the ``dramatiq`` command line to run."""
    settings = conf.get()
    if services.is_embedded_store():
        raise CommandError(
            "runworker needs a MongoDB that other processes can share, and DETFLOW_MONGODB_URL is "
            "unset (the embedded store lives in one process's memory). Set DETFLOW_MONGODB_URL and "
            "DETFLOW_REDIS_URL, or run API, workers and sweeper in one process: "
            "python manage.py rundev"
        )
    if settings.REDIS_URL is None:
        raise CommandError(
            "runworker needs a Redis that other processes can share: set DETFLOW_REDIS_URL "
            "(for example redis://localhost:6379/0)"
        )
    if processes < 1 or threads < 1:
        raise CommandError("--processes and --threads must be at least 1")
    return [
        sys.executable, "-m", "dramatiq", "executions.worker_boot",
        "--processes", str(processes), "--threads", str(threads),
        "--queues", *(queues or sorted(declared_queues())),
    ]


def run(command: list[str], sweeper: bool, out: Any) -> None:
    """Run the worker processes until they exit; SIGTERM and SIGINT are passed on to them.

    Dramatiq stops consuming on SIGTERM and lets running messages finish; an attempt that does not
    finish is recovered when its lease runs out.
    """
    out(f"detflow workers on {services.store_description()}: {' '.join(command[2:])}")
    metrics_dir, own = metrics_directory()
    # Dramatiq's consumers poll Redis and back off up to the worker timeout when idle (1 s by
    # default): a step finishing after a quiet spell would wait that long for its successor.
    environ = {**os.environ, metrics.MULTIPROC_DIR: metrics_dir, _DRAMATIQ_DB: metrics_dir}
    # The worker processes import the project's modules (executions.worker_boot, the handlers):
    # started from any directory, they find them as manage.py's own process does.
    project = str(django_settings.BASE_DIR)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, (project, os.environ.get("PYTHONPATH"))))
    environ.setdefault("dramatiq_worker_timeout", "100")
    try:
        code = supervise(command, environ, sweeper)
    finally:
        if own:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if code:
        raise CommandError(f"worker processes exited with status {code}")


def metrics_directory() -> tuple[str, bool]:
    """Return the metrics directory of this process set, and whether it was made for this set alone.

    A directory named by ``PROMETHEUS_MULTIPROC_DIR`` (or Dramatiq's ``dramatiq_prom_db``) is this
    set's across runs: it is created and emptied of an earlier run's files. Otherwise the set gets
    a new private one (mode 0700, nothing stale in it), removed when the set stops.
    """
    named = os.environ.get(metrics.MULTIPROC_DIR) or os.environ.get(_DRAMATIQ_DB)
    if named:
        metrics.start_set(named)
        return named, False
    return tempfile.mkdtemp(prefix="detflow-metrics-"), True


def supervise(command: list[str], environ: dict[str, str], sweeper: bool) -> int:
    """Run the worker processes and the sweeper until the workers exit; return their status."""
    from executions.sweeper import Sweeper

    child = subprocess.Popen(command, env=environ)
    thread = Sweeper(exclusive=True) if sweeper else None
    if thread is not None:
        thread.start()

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    if thread is not None:
        thread.stop()
    return code
