"""``manage.py rundev``: API, admin, worker threads and the sweeper in one process."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = ("Run the web app (API and admin) on 127.0.0.1, Dramatiq worker threads and the recovery "
            "sweeper in one process, on the embedded store or on the configured MongoDB and Redis.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
        parser.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")

    def handle(self, *args: Any, **options: Any) -> None:
        from detflow_site.demo import serve
        from executions.workers import WorkerPool
        from workflows.builtin import ensure_file_processing

        if options["threads"] < 1:
            raise CommandError("--threads must be at least 1")
        port = serve.check_port(options["port"])
        for line in serve.banner(port, options["threads"]):
            self.stdout.write(line)
        serve.migrate()
        ensure_file_processing()
        pool = WorkerPool(threads=options["threads"]).start()
        try:
            serve.run_server(port)
        finally:
            self.stdout.write("stopping: running attempts finish, then the workers and the sweeper stop")
            pool.stop()
            self.stdout.write("stopped")
