"""``manage.py rundev``: API, admin, worker threads and the sweeper in one process."""
from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from detflow_site import services


class Command(BaseCommand):
    help = "Run the web app, Dramatiq worker threads and the recovery sweeper in one process."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
        parser.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")

    def handle(self, *args: Any, **options: Any) -> None:
        from executions.workers import WorkerPool

        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write(f"store: {services.store_description()}")
        self.stdout.write(f"redis: {services.redis_url()}")
        pool = WorkerPool(threads=options["threads"]).start()
        try:
            call_command("runserver", f"127.0.0.1:{options['port']}", use_reloader=False)
        finally:
            pool.stop()
