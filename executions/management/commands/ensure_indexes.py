"""``manage.py ensure_indexes``: make the store hold exactly the declared indexes."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from pymongo.errors import PyMongoError

from detflow_site import indexes, services


class Command(BaseCommand):
    help = ("Create the declared indexes of every collection, rebuild those whose keys or options "
            "changed, drop those no longer declared; print what changed. Safe to run again.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            changes = indexes.ensure()
        except PyMongoError as exc:
            # pymongo appends the whole topology to a selection timeout: the reason comes first.
            reason = str(exc).split(", Timeout:")[0][:300]
            raise CommandError(f"cannot ensure indexes on {services.store_description()}: "
                               f"{type(exc).__name__}: {reason}") from exc
        for change in changes:
            self.stdout.write(str(change))
        declared = indexes.declared()
        total = sum(len(wanted) for wanted in declared.values())
        self.stdout.write(f"{total} indexes in {len(declared)} collections as declared, "
                          f"{len(changes)} changed, on {services.store_description()}")
