"""``manage.py apiuser NAME --role viewer|operator|signaller``: make an API user and print its token."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from executions import roles

ROLE_NAMES = {"viewer": roles.VIEWERS, "operator": roles.OPERATORS, "signaller": roles.SIGNALLERS}


class Command(BaseCommand):
    help = ("Create the user NAME if missing (without a password), give it exactly one API role, and "
            "print its API token. The groups 'viewers', 'operators' and 'signallers' are created if missing.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", choices=sorted(ROLE_NAMES), required=True,
                            help="viewer: read; operator: also start, cancel, retry, skip, compensate and "
                                 "signal; signaller: only send signals")
        parser.add_argument("--new-token", action="store_true",
                            help="replace the user's token (the old one stops working)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = roles.grant(options["username"], ROLE_NAMES[options["role"]],
                              new_token=options["new_token"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(key)
