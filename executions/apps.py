"""The executions app: registers the chaos workflow's handler in every process."""
from __future__ import annotations

from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        from executions.chaos import handlers  # noqa: F401  (registers chaos.step)
