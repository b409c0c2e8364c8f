"""The insights app: connects the post-mortem receiver to the engine's ``execution_finished``."""
from __future__ import annotations

from django.apps import AppConfig


class InsightsConfig(AppConfig):
    name = "insights"

    def ready(self) -> None:
        from executions.signals import execution_finished
        from insights import receivers

        execution_finished.connect(receivers.execution_finished, dispatch_uid="insights.postmortem")
