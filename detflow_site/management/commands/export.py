"""``manage.py export``: write finished executions to a gzip JSON Lines file (and remove them)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from detflow_site import retention
from detflow_site.commands import StoreCommand
from detflow_site.times import to_ms


def parse_before(text: str) -> int:
    """Return an ISO 8601 time as milliseconds since the epoch (no zone: UTC)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--finished-before {text!r} is not an ISO 8601 time; give one such as "
                           "2026-01-31T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(to_ms(when) or 0)


class Command(StoreCommand):
    help = ("Write finished executions (each with its whole history, as the API shows it) to a gzip "
            "JSON Lines file, one line per execution; with --purge, remove each once its line is on disk.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="the file to write (FILE.jsonl.gz; must not exist)")
        parser.add_argument("--workflow", help="only this workflow's executions")
        parser.add_argument("--finished-before", help="only those finished at or before this ISO 8601 time")
        parser.add_argument("--purge", action="store_true",
                            help="remove each exported execution, its history, insight and files")

    def handle(self, *args: Any, **options: Any) -> None:
        out = Path(options["out"])
        if not out.name.endswith(".jsonl.gz"):
            raise CommandError(f"--out {out} must name a .jsonl.gz file")
        if out.exists():
            raise CommandError(f"--out {out} exists already; give a new file (exports never append)")
        if not out.parent.is_dir():
            raise CommandError(f"--out {out}: the directory {out.parent} does not exist")
        before = parse_before(options["finished_before"]) if options["finished_before"] else None
        workflow = options["workflow"]
        if workflow is not None and workflow not in retention.workflow_names():
            raise CommandError(f"--workflow {workflow!r} is not registered; known: "
                               + (", ".join(retention.workflow_names()) or "none"))
        report = retention.export(out, workflow, before, purge_too=options["purge"])
        self.stdout.write(report.summary())
