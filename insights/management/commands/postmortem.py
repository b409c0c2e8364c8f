"""``manage.py postmortem ID [--regenerate] [--json]``: print the post-mortem of a finished execution."""
from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from detflow_site.commands import StoreCommand
from detflow_site.errors import DetflowError
from insights import service
from insights.representation import lines, represent


class Command(StoreCommand):
    help = ("Print the post-mortem of an execution, writing it by rules first if there is none yet; "
            "--regenerate writes it again by the model OPENAI_API_KEY configures (within "
            "DETFLOW_INSIGHTS_MODEL_CALLS_PER_HOUR), or by rules.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("execution_id", help="the execution's id")
        parser.add_argument("--regenerate", action="store_true",
                            help="write it again, asking the model if one is configured")
        parser.add_argument("--json", action="store_true", help="print it as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            if options["regenerate"]:
                record, current = service.postmortem(options["execution_id"], regenerate=True), True
            else:
                record, current = service.shown(options["execution_id"])
        except DetflowError as exc:
            raise CommandError(str(exc)) from None
        data = represent(record, current)
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, default=str))
        else:
            self.stdout.write("\n".join(lines(data)))
