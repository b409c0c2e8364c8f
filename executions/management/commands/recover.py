"""``manage.py recover``: run one recovery sweep now and print what it did."""
from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from detflow_site.commands import StoreCommand
from executions.sweeper import sweep


class Command(StoreCommand):
    help = "Run one recovery sweep: record expired leases as lost and re-send due work."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--grace", type=float, default=None,
            help="seconds due work may wait for its message before a re-send "
                 "(default DETFLOW_SWEEP_GRACE_S)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = sweep(grace_s=options["grace"])
        self.stdout.write(report.summary())
        for execution_id in report.lost:
            self.stdout.write(f"  lost attempt recorded: {execution_id}")
        for execution_id in report.resent:
            self.stdout.write(f"  message sent: {execution_id}")
