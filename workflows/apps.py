"""The workflows app: imports the handler modules so every process knows the same handlers."""
from __future__ import annotations

from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"

    def ready(self) -> None:
        from detflow_site import conf
        from workflows import email, files, payments, registry  # noqa: F401  (they register the built-in handlers)

        if not conf.problems():
            registry.import_handler_modules(conf.get().HANDLER_MODULES)
