"""``manage.py verify``: replay stored histories through the engine and report divergences."""
from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from detflow_site.commands import StoreCommand
from executions import audit, store


class Command(StoreCommand):
    help = "Replay each execution's history through decide() and report every divergence."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", help="execution ids to verify")
        parser.add_argument("--all", action="store_true", help="verify every stored execution")

    def handle(self, *args: Any, **options: Any) -> None:
        ids: list[str] = options["ids"]
        if bool(ids) == bool(options["all"]):
            raise CommandError("give execution ids or --all (not both)")
        if options["all"]:
            docs: Any = map(store.with_history, store.collection().find({}, batch_size=200))
        else:
            docs = []
            for execution_id in ids:
                doc = store.load(execution_id)
                if doc is None:
                    raise CommandError(f"execution {execution_id} does not exist")
                docs.append(doc)
        checked = diverged = 0
        for execution_id, divergences in audit.verify_all(docs):
            checked += 1
            if divergences:
                diverged += 1
                self.stdout.write(f"{execution_id}: {len(divergences)} divergence(s)")
                for divergence in divergences:
                    self.stdout.write(f"  {divergence}")
        if diverged:
            raise CommandError(f"{diverged} of {checked} execution(s) diverge from their history")
        self.stdout.write(f"verified {checked} execution(s): no divergence")
