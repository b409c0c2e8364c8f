"""``manage.py purge``: remove finished executions past their retention (one bounded pass)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from detflow_site import retention
from detflow_site.commands import StoreCommand
from detflow_site.times import now_ms


class Command(StoreCommand):
    help = ("Remove finished executions older than DETFLOW_RETENTION_DAYS (or their workflow's "
            "retention_days) with their history, insight and files; at most --limit per run.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
        parser.add_argument("--export-dir", help="first write each removed execution to a gzip JSON "
                                                 "Lines file in this directory")
        parser.add_argument("--limit", type=int, default=retention.LIMIT,
                            help=f"executions removed at most (default {retention.LIMIT})")

    def handle(self, *args: Any, **options: Any) -> None:
        folder = options["export_dir"]
        if folder is not None and not Path(folder).is_dir():
            raise CommandError(f"--export-dir {folder} is not a directory; create it first")
        if options["limit"] < 1:
            raise CommandError(f"--limit {options['limit']} must be at least 1")
        report = retention.purge(now_ms(), limit=options["limit"], export_to=folder,
                                 dry_run=options["dry_run"])
        self.stdout.write(report.summary())
