"""``manage.py bulk``: retry or cancel every execution a filter matches, as ``POST bulk-operations/``.

The command runs the operation itself, batch by batch, through the same fenced operator actions a
worker uses, and prints its progress; killed midway, the operation stays stored with its lease, and
a worker's sweeper sends it on once the lease has run out (no execution is acted on twice).
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from detflow_site.api import filters
from detflow_site.commands import StoreCommand
from executions import bulk
from executions.errors import InvalidArgument

#: The command's options that are the executions list's filters (``--failed-step`` is failed_step;
#: ``--workflow-version`` is version, ``--version`` being Django's own).
FILTERS = ("status", "workflow", "workflow_version", "failed_step", "created_after", "created_before")


class Command(StoreCommand):
    help = "Retry or cancel every execution that the filters match (a dry run counts them)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=bulk.ACTIONS)
        parser.add_argument("--reason", help="why (recorded on each execution); required unless --dry-run")
        parser.add_argument("--by", default="manage.py bulk", help="who acts (default: 'manage.py bulk')")
        for name in FILTERS:
            parser.add_argument("--" + name.replace("_", "-"), dest=name,
                                help=f"the executions list's {name} filter")
        parser.add_argument("--dry-run", action="store_true", help="count the matches; change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        params = {("version" if name == "workflow_version" else name): str(options[name])
                  for name in FILTERS if options.get(name) is not None}
        try:
            query = filters.parse(params).filter
            if options["dry_run"]:
                planned = bulk.plan(options["action"], query)
                self.stdout.write(f"{planned['count']} execution(s) match; the first: "
                                  + (", ".join(planned["sample"]) or "none"))
                return
            op = bulk.store_op(options["action"], query, options["reason"] or "", options["by"])
        except InvalidArgument as exc:
            option = "workflow-version" if exc.field == "version" else str(exc.field).replace("_", "-")
            raise CommandError(f"--{option}: {exc.reason}") from None
        self.stdout.write(f"bulk operation {op['_id']}: {options['action']} of {op['total']} execution(s)")
        done = bulk.run(op["_id"]) or bulk.get(op["_id"]) or op
        self.stdout.write(f"{done['status']}: {done['done']} of {done['total']} handled, {done['acted']} "
                          f"{ {'retry': 'retried', 'cancel': 'cancelled'}[options['action']]}, "
                          f"{done['skipped']} skipped, {done['failed']} failed")
        for error in done.get("errors") or []:
            self.stdout.write(f"  {error}")
        if done["status"] != bulk.SUCCEEDED:
            raise CommandError(f"bulk operation {op['_id']} ended {done['status']}")
