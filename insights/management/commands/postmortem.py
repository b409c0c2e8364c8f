"""``manage.py postmortem ID [--regenerate] [--json]``: print the post-mortem of a finished execution."""
from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from insights import service
from insights.representation import lines, represent
from workflows.errors import DetflowError


class Command(BaseCommand):
    help = ("Print the post-mortem of a finished execution, writing it first if there is none yet "
            "(by the model OPENAI_API_KEY configures, or by rules).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("execution_id", help="the execution's id")
        parser.add_argument("--regenerate", action="store_true",
                            help="write it again even if an up-to-date one is stored")
        parser.add_argument("--json", action="store_true", help="print it as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            record = service.postmortem(options["execution_id"], regenerate=options["regenerate"])
        except DetflowError as exc:
            raise CommandError(str(exc)) from None
        data = represent(record, current=True)
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, default=str))
        else:
            self.stdout.write("\n".join(lines(data)))
