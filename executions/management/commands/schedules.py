"""``manage.py schedules``: list, create, pause, resume and delete schedules."""
from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from detflow_site.commands import StoreCommand
from detflow_site.errors import DetflowError
from detflow_site.times import to_dt, to_ms
from executions import schedules


class Command(StoreCommand):
    help = "List, create, pause, resume or delete the schedules that start workflows at cron times."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="list every schedule")
        create = sub.add_parser("create", help="create a schedule")
        create.add_argument("--workflow", required=True)
        create.add_argument("--cron", required=True, help='5 fields, or 6 with seconds: "*/5 * * * *"')
        create.add_argument("--input", default="null", help="the executions' input, as JSON")
        create.add_argument("--version", type=int, default=None)
        create.add_argument("--timezone", default="UTC")
        create.add_argument("--overlap", default="skip", choices=schedules.OVERLAPS)
        create.add_argument("--catch-up-s", type=float, default=0)
        for name in ("pause", "resume", "delete"):
            sub.add_parser(name, help=f"{name} a schedule").add_argument("id")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._act(options)
        except DetflowError as exc:
            raise CommandError(str(exc)) from None

    def _act(self, options: dict[str, Any]) -> None:
        action = options["action"]
        if action == "list":
            for doc in schedules.listed():
                self.stdout.write(_line(doc))
        elif action == "create":
            try:
                given = json.loads(options["input"])
            except ValueError as exc:
                raise CommandError(f"--input: not JSON ({exc}); pass e.g. --input '{{\"a\": 1}}'") from None
            doc = schedules.create(options["workflow"], options["cron"], input=given,
                                   version=options["version"], timezone_name=options["timezone"],
                                   overlap=options["overlap"], catch_up_s=options["catch_up_s"],
                                   created_by="manage.py")
            self.stdout.write(f"created {_line(doc)}")
        elif action == "delete":
            schedules.delete(options["id"])
            self.stdout.write(f"deleted {options['id']}")
        else:
            doc = schedules.set_paused(options["id"], action == "pause")
            self.stdout.write(f"{action}d {_line(doc)}")


def _line(doc: dict[str, Any]) -> str:
    at = to_ms(doc.get("next_fire_at"))
    shown = to_dt(at) if at is not None else None
    when = shown.isoformat() if shown is not None else "-"
    state = "paused" if doc["paused"] else f"next {when}"
    return f"{doc['_id']} {doc['workflow']} {doc['cron']!r} {doc['timezone']} {doc['overlap']} {state}"
